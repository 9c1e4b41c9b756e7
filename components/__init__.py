"""Pulumi components of ServedModel (type tokens `servedmodel:index:<Name>`, fixed)."""
from components.args import (ArgsError, AutoscalingArgs, ModelArgs, MonitoringArgs, NetworkArgs, NodePoolArgs, Problem,
                             RegistryArgs, ResourcesArgs, RolloutArgs, ServedModelArgs, ServerArgs)
from components.gpu_node_pool import GpuNodePool, GpuNodePoolArgs
from components.local_service import LocalService, LocalServiceArgs
from components.model_image import ModelImage, ModelImageArgs
from components.model_monitoring import ModelMonitoring, ModelMonitoringArgs
from components.model_service import ModelService, ModelServiceArgs
from components.served_model import ServedModel
from components.settings import ConfigError, Settings, load_settings, parse_settings

__all__ = [
    "ArgsError", "AutoscalingArgs", "ConfigError", "GpuNodePool", "GpuNodePoolArgs", "LocalService",
    "LocalServiceArgs", "ModelArgs", "ModelImage", "ModelImageArgs", "ModelMonitoring", "ModelMonitoringArgs",
    "ModelService", "ModelServiceArgs", "MonitoringArgs", "NetworkArgs", "NodePoolArgs", "Problem", "RegistryArgs",
    "ResourcesArgs", "RolloutArgs", "ServedModel", "ServedModelArgs",
    "ServerArgs", "Settings", "load_settings", "parse_settings",
]
