from .measure import RequestScores, generate_greedy, measure
from .protocols import KEY_PROTOCOLS, EDITING_PROTOCOLS, Report, evaluate_editing, format_table, verdict

__all__ = ["RequestScores", "generate_greedy", "measure", "KEY_PROTOCOLS", "EDITING_PROTOCOLS", "Report", "evaluate_editing", "format_table", "verdict"]
