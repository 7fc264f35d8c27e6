"""mt_assets: the models MeiGen MultiTalk loads, declared, placed on a shared volume and verified."""

__version__ = "0.1.0"
