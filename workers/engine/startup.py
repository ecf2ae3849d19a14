"""Start-up decisions that need the config and the model folder's files only: the task (the
folder's kind decides when none is given), the workflow, the native body on the meta device,
the output width, and `preflight`, every check the driver can run before Ray starts.
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from ..config import EngineConfig
from ..loading.fallback import fallback_workflow, implementation
from ..loading.loader import meta_modules
from ..loading.model_folder import ModelFolder, open_model_folder
from ..loading.resolve import Resolved, resolve
from ..models import model_class
from ..workflow import DECODERS, Workflow, select_workflow

logger = logging.getLogger(__name__)


def preflight(config: EngineConfig) -> EngineConfig:
    """Every check that needs only the config and the model folder's files (no weights, no
    device): the folder reads and serves the task, the workflow exists, max_length fits the
    positions, pooling/prompt/dimensions resolve. Raises what `Engine` would raise at start-up;
    returns the config with its task resolved. Run by the pipeline's driver before Ray starts."""
    return preflight_fingerprint(config)[0]


# The fields of `Engine.fingerprint()` that the folder's files and the options decide alone,
# wherever the engine runs (not the device's dtype or attention backend, nor the folder's
# name, which differs in a node's copy).
PREVIEW_FIELDS = ("model_hash", "architecture", "pooling", "normalize", "max_length", "truncation")


def preflight_fingerprint(config: EngineConfig) -> tuple[EngineConfig, dict]:
    """`preflight`, and the PREVIEW_FIELDS of the fingerprint an `Engine` on this folder
    with these options will have (empty for a folder run through the transformers fallback,
    whose body is only known once built): the driver compares them with an output's before Ray
    starts, so a resume with other settings is refused in seconds."""
    folder = open_model_folder(config.model, allow_pickle=config.allow_pickle)
    config = with_task(config, folder)
    if implementation(config, folder) != "native":
        fallback_workflow(config, folder)
        return config, {}
    workflow = workflow_for(config, folder)
    r = resolve(config, folder, native_body(folder).max_length, workflow, torch.device("cpu"), torch.float32)
    preview = {"model_hash": folder.identity(), "architecture": folder.architecture, "pooling": r.pooling,
               "normalize": r.normalize, "max_length": r.max_length, "truncation": config.truncation}
    return config, preview


def with_task(config: EngineConfig, folder: ModelFolder) -> EngineConfig:
    """`config` with its task resolved: the folder's kind decides when the task is None (and
    the options are validated again against it); a task the kind cannot serve is refused."""
    task = config.task or folder.default_task()
    folder.check_task(task)
    if config.task is None:
        logger.info("task=%r, from the folder %s (%s)", task, folder.path, folder.st.kind or folder.architecture)
    return dataclasses.replace(config, task=task)


def native_body(folder: ModelFolder) -> torch.nn.Module:
    """This package's packed body for the folder, on the meta device (`Engine._load` fills it)."""
    with meta_modules():
        return model_class(folder.architecture)(folder.hf_config)


def workflow_for(config: EngineConfig, folder: ModelFolder) -> Workflow:
    """The workflow for (architecture, task); an embedding decoder's attention is the config's
    enable_bidirectional, else what the folder declares, else causal."""
    bidirectional = config.enable_bidirectional
    if bidirectional is None and config.task in ("embed", "chunks") and folder.architecture in DECODERS:
        bidirectional = folder.declared_bidirectional
    return select_workflow(folder.architecture, config.task, bidirectional)


def output_width(workflow: Workflow, folder: ModelFolder, r: Resolved) -> int:
    """Columns of one output row: vector dims, 1 score, or one logit per label."""
    if workflow.output in ("vector", "chunks"):  # no Dense (else the head's width): pooled modes x hidden
        return r.dimensions or folder.hf_config.hidden_size * len(r.pooling.split("+"))
    return 1 if workflow.output == "score" else folder.hf_config.num_labels
