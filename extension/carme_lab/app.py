"""`CarmeLabApp`: the jupyter_server extension that serves ``/carme/api/``.

Enabled on install by ``etc/jupyter/jupyter_server_config.d/carme_lab.json``;
JupyterLab loads the side panel (the prebuilt labextension ``carme-lab``) on its
own. The app builds one `LabService` and hands it to the handlers through the
tornado settings. Settings (``--CarmeLabApp.<name>=...`` or a config file):

- ``interval``: seconds between stream messages (default 1).
- ``call_timeout``: seconds a cluster call may take before the request fails.
- ``start_timeout``: seconds starting or stopping a cluster may take (a Ray head
  takes seconds to tens of seconds on a small machine).
- ``backend_class``: the blocking cluster backend (default: carme and Ray
  behind `EngineBackend`; tests give a fake one).
- ``state_file``: where the selection is kept across restarts.
- ``stop_clusters_on_exit``: stop the clusters this server started when it
  stops (default False: clusters outlive the server, and the panel finds them
  again after a restart).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, cast

from jupyter_core.paths import jupyter_runtime_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Type, Unicode, default

from ._k8s_handlers import K8S_HANDLERS
from ._kubernetes import KubeRayConfig, KubeRayService
from ._service import ENV_VAR, Backend, LabService
from .handlers import API, HANDLERS

__all__ = ["CarmeLabApp"]


class CarmeLabApp(ExtensionApp):
    name = "carme_lab"
    load_other_extensions = True
    classes = [KubeRayConfig]  # --KubeRayConfig.<name>: the RayClusters section (_kubernetes.py)

    interval = Float(1.0, config=True, help="Seconds between two messages of the live stream.")
    call_timeout = Float(10.0, config=True, help="Seconds a call to a cluster may take.")
    start_timeout = Float(300.0, config=True,
                          help="Seconds starting or stopping a cluster may take.")
    backend_class = Type(
        "carme_lab._service.EngineBackend", klass=object, config=True,
        help="Class of the blocking cluster backend (tests substitute a fake).")
    state_file = Unicode(
        config=True,
        help="Where the selection is saved across restarts (default: carme_lab.json in "
             "Jupyter's runtime directory; empty string: not saved).")
    stop_clusters_on_exit = Bool(
        False, config=True,
        help="Stop the clusters this server started when the server stops.")

    @default("state_file")
    def _default_state_file(self) -> str:
        return os.path.join(jupyter_runtime_dir(), "carme_lab.json")

    def initialize_settings(self) -> None:
        service = LabService(
            cast(Callable[[], Backend], self.backend_class)(),
            given=os.environ.get(ENV_VAR) or None,
            interval=self.interval,
            call_timeout=self.call_timeout,
            start_timeout=self.start_timeout,
            log=self.log,
            state_file=self.state_file or None,
        )
        self.settings["carme_lab_service"] = service
        self.settings["carme_kuberay_service"] = KubeRayService(
            KubeRayConfig(config=self.config), service, log=self.log)
        self.log.info("carme_lab: serving /%s/ (kernels join: %s)", API,
                      service.book.selected or "an embedded cluster each")

    def initialize_handlers(self) -> None:
        self.handlers.extend((f"{API}/{pattern}", cls) for pattern, cls in HANDLERS + K8S_HANDLERS)

    async def stop_extension(self) -> None:
        service: Any = self.settings.get("carme_lab_service")
        if service is not None:
            await service.close(stop_started=self.stop_clusters_on_exit)
        kuberay: Any = self.settings.get("carme_kuberay_service")
        if kuberay is not None:
            await kuberay.close()
