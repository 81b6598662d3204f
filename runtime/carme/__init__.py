"""carme: a notebook-native cluster runtime that speaks the Ray core API.

`import carme as ray` runs Ray core code: tasks, actors and objects on a runtime of its
own that starts in well under a second. Importing carme starts nothing.
"""

from . import actor, exceptions, util
from ._api import (
    available_resources,
    cancel,
    cluster_resources,
    get,
    get_gpu_ids,
    get_runtime_context,
    init,
    is_initialized,
    kill,
    nodes,
    put,
    shutdown,
    timeline,
    wait,
)
from ._objects import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from ._remote import ActorClass, ActorHandle, get_actor, method, remote

__version__ = "0.1.0"

__all__ = [
    "ActorClass",
    "ActorHandle",
    "DynamicObjectRefGenerator",
    "ObjectRef",
    "ObjectRefGenerator",
    "actor",
    "available_resources",
    "cancel",
    "cluster_resources",
    "exceptions",
    "get",
    "get_actor",
    "get_gpu_ids",
    "get_runtime_context",
    "init",
    "is_initialized",
    "kill",
    "method",
    "nodes",
    "put",
    "remote",
    "shutdown",
    "timeline",
    "util",
    "wait",
]
