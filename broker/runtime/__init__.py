"""The broker's runtime: the pipeline stages between ingress and egress (issue 5).

So far: :class:`Intake`, which authenticates, opens, decodes and checks each ingress record
or rejects it with a quarantine reason code.
"""

from broker.runtime._decide import Decider, Outcome, Verdict
from broker.runtime._intake import (
    MAX_RECORD_BYTES,
    Accepted,
    HeaderMismatch,
    Intake,
    IntakeError,
    NotAnEvent,
    OversizedRecord,
    Rejected,
    UnknownAgency,
)
from broker.runtime._pipeline import Pipeline

__all__ = [
    "MAX_RECORD_BYTES",
    "Accepted",
    "Decider",
    "HeaderMismatch",
    "Intake",
    "IntakeError",
    "NotAnEvent",
    "Outcome",
    "OversizedRecord",
    "Pipeline",
    "Rejected",
    "UnknownAgency",
    "Verdict",
]
