"""MultiTalk model code: Wan2.1 I2V DiT with the audio adapter, T5, CLIP, VAE, audio features, and
strict loaders for the on-volume formats (the tiny profile's builders are in `mt_assets.tiny`)."""
