"""Statistics of keys over ordinary text (second moments for ROME / MEMIT / AlphaEdit), cached on disk."""
from .second_moment import DEFAULT_TOKENS, StatsSource, default_text_path, layer_second_moments, stats_dir

__all__ = ["DEFAULT_TOKENS", "StatsSource", "default_text_path", "layer_second_moments", "stats_dir"]
