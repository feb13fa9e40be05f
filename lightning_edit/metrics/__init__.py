from .edit_metrics import (SCORING_PROTOCOLS, EditSeconds, Fluency, LocalityAgreement, PeakMemory, ProbabilityPreference,
                           TargetAccuracy, TfidfConsistency, ngram_entropy)
from .memory import PeakMemoryMonitor

__all__ = ["SCORING_PROTOCOLS", "EditSeconds", "Fluency", "LocalityAgreement", "PeakMemory", "ProbabilityPreference",
           "TargetAccuracy", "TfidfConsistency", "ngram_entropy", "PeakMemoryMonitor"]
