"""Deployment: a developer / client / server split of a compiled model, with Concrete ML's
names and behaviour, and an encrypted-inference HTTP server (``fhequant serve``).

* :class:`FHEModelDev` (developer): ``FHEModelDev(path_dir, model).save()`` writes
  ``client.zip`` (client specs, quantizers, pre/post-processing, versions; no weights) and
  ``server.zip`` (the compiled circuit and the model's description; no key).
* :class:`FHEModelClient` (data owner): keys, ``quantize_encrypt_serialize``,
  ``deserialize_decrypt_dequantize``; the secret key stays here.
* :class:`FHEModelServer` (model owner): ``load()``, ``run(ciphertexts, evaluation_keys)``.
* :func:`save_compiled_module` / :func:`load_compiled_module`: a compiled module and its
  circuit's artifacts, loaded back without recompiling (``forward(x, fhe="execute")``).
* :class:`RemoteClient`: an FHEModelClient talking to ``fhequant serve`` over HTTP (needs
  ``pip install fhequant[serve]``); :func:`create_app` builds the server's ASGI app.

No pickle is used: artifacts are zip files of JSON and concrete's compiled circuit, and
ciphertexts travel in the checked byte format of :mod:`fhequant.deployment.wire`.
"""

from __future__ import annotations

from fhequant.deployment.app import create_app
from fhequant.deployment.client import FHEModelClient
from fhequant.deployment.compiled import load_compiled_module, save_compiled_module
from fhequant.deployment.dev import FHEModelDev
from fhequant.deployment.remote import RemoteClient
from fhequant.deployment.server import FHEModelServer, load_evaluation_keys

__all__ = [
    "FHEModelClient",
    "FHEModelDev",
    "FHEModelServer",
    "RemoteClient",
    "create_app",
    "load_compiled_module",
    "load_evaluation_keys",
    "save_compiled_module",
]
