"""The tiny profile: multitalk-480p's files at toy scale, built here; and the demo's inputs.

    profile.py    build_tiny_mirror (every file of the profile, deterministic), the medium benchmark
                  scale, and staleness of a built mirror against profiles/tiny.yaml
    dit.py        the tiny DiT and adapter, written in the published shard/index formats
    wan_parts.py  the tiny T5, CLIP, VAE and tokenizers in Wan's own formats
    wav2vec2.py   the tiny wav2vec2 in the Hugging Face layout
    lora.py       the tiny add-ons' LoRA files (tiny-fusionx, tiny-lightx2v) in the real files' key families
    samples.py    drawn faces and speech-like audio for the demo, the tests and the benchmarks

Test fixtures and the demo build from here; the loaders in `mt_assets.models` never import it.
"""
