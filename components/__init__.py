"""Pulumi components of ServedModel (type tokens `servedmodel:index:<Name>`, fixed)."""
from components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from components.local_service import LocalService, LocalServiceArgs
from components.model_image import ModelImage, ModelImageArgs
from components.model_service import ModelService, ModelServiceArgs
from components.served_model import ServedModel, ServedModelArgs
from components.settings import ConfigError, ModelEntry, Settings, load_settings, parse_settings

__all__ = [
    "ConfigError", "GpuNodePool", "GpuNodePoolArgs", "LocalService", "LocalServiceArgs", "ModelEntry",
    "ModelImage", "ModelImageArgs", "ModelService", "ModelServiceArgs", "ServedModel", "ServedModelArgs",
    "Settings", "load_settings", "parse_settings",
]
