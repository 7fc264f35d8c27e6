"""MultiTalk model code: Wan2.1 I2V DiT with the audio adapter, T5, CLIP, VAE, audio features,
strict loaders for the on-volume formats, and the tiny profile builder."""
