from .measure import RequestScores, generate_greedy, measure
from .pre_edit import PreEditCache, default_pre_cache
from .protocols import KEY_PROTOCOLS, EDITING_PROTOCOLS, Report, evaluate_editing, format_table, verdict

__all__ = ["RequestScores", "generate_greedy", "measure", "PreEditCache", "default_pre_cache", "KEY_PROTOCOLS", "EDITING_PROTOCOLS",
           "Report", "evaluate_editing", "format_table", "verdict"]
