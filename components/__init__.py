"""Pulumi components of ServedModel (type tokens `servedmodel:index:<Name>`, fixed)."""
from .args import (
                             ArgsError,
                             AutoscalingArgs,
                             EncryptionArgs,
                             ModelArgs,
                             MonitoringArgs,
                             NetworkArgs,
                             NodePoolArgs,
                             Problem,
                             RegistryArgs,
                             ResourcesArgs,
                             RolloutArgs,
                             ServedModelArgs,
                             ServerArgs,
)
from .gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from .local_service import LocalService, LocalServiceArgs
from .model_image import ModelImage, ModelImageArgs
from .model_monitoring import ModelMonitoring, ModelMonitoringArgs
from .model_service import ModelService, ModelServiceArgs
from .served_model import ServedModel
from .settings import ConfigError, Settings, load_settings, parse_settings

__all__ = [
    "ArgsError", "AutoscalingArgs", "ConfigError", "EncryptionArgs", "GpuNodePool", "GpuNodePoolArgs", "LocalService",
    "LocalServiceArgs", "ModelArgs", "ModelImage", "ModelImageArgs", "ModelMonitoring", "ModelMonitoringArgs",
    "ModelService", "ModelServiceArgs", "MonitoringArgs", "NetworkArgs", "NodePoolArgs", "Problem", "RegistryArgs",
    "ResourcesArgs", "RolloutArgs", "ServedModel", "ServedModelArgs",
    "ServerArgs", "Settings", "load_settings", "parse_settings",
]
