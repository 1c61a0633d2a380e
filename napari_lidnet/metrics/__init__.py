"""Image quality (PSNR/SSIM/RMSE), ROI statistics and detection (FROC) metrics."""
