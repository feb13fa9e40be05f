from .edit_metrics import (PROTOCOLS, EditSeconds, Fluency, LocalityAgreement, PeakMemory, ProbabilityPreference,
                           TargetAccuracy, ngram_entropy)
from .memory import PeakMemoryMonitor

__all__ = ["PROTOCOLS", "EditSeconds", "Fluency", "LocalityAgreement", "PeakMemory", "ProbabilityPreference",
           "TargetAccuracy", "ngram_entropy", "PeakMemoryMonitor"]
