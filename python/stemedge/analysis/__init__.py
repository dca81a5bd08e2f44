"""Mergeable analyses (centre of mass / DPC, virtual detectors, patterns, SSB) and the offline
runner.

See :mod:`stemedge.analysis.base` for the contract shared by live, offline and Dask runs.
"""

from __future__ import annotations

from stemedge.analysis.base import (
    Analysis,
    ResultKind,
    ResultSpec,
    ScanIndices,
    check_coverage,
    check_partials,
    scan_indices,
)
from stemedge.analysis.com import CenterOfMassAnalysis
from stemedge.analysis.patterns import MaxPattern, MeanPattern, SumPattern
from stemedge.analysis.runner import Coverage, merge_partials, run_offline
from stemedge.analysis.ssb import SSBAnalysis
from stemedge.analysis.virtual import VirtualDetectorAnalysis

__all__ = [
    "Analysis",
    "CenterOfMassAnalysis",
    "Coverage",
    "MaxPattern",
    "MeanPattern",
    "ResultKind",
    "ResultSpec",
    "SSBAnalysis",
    "ScanIndices",
    "SumPattern",
    "VirtualDetectorAnalysis",
    "check_coverage",
    "check_partials",
    "merge_partials",
    "run_offline",
    "scan_indices",
]
