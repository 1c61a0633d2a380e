"""Reading CT: DICOM series, DeepLesion key slices, arrays; windowing."""
