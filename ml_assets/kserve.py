"""Render the KServe InferenceService that serves the registry's champion (`make kserve`).

    python -m ml_assets.kserve [--output deploy/kserve/fraud-detector.yaml] [--namespace NS]
        [--online-store redis://user:password@host:6379/0] [--online-store-secret NAME]

Reads the registered model's aliases and strategy tags (the same ones ml_assets.serving follows) and
writes one manifest: the MLflow model format on KServe's MLServer runtime (Open Inference Protocol,
v2), `storageUri` the served version's artifacts in the MLflow artifact store. Under the canary
strategy it is KServe's canary rollout (see `manifest`). Run it after every promotion move and apply
the result (`kubectl apply -f`, or commit it for a GitOps controller): the registry stays the one
place that decides what serves. Given the online store (`--online-store`, by default the setting
ML_ASSETS_ONLINE_STORE), the predictor scores with the live card histories the service keeps: the
manifest carries the store's address, and its credentials come from a Kubernetes Secret.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse, urlsplit, urlunsplit

import yaml

from ml_assets.lib import paths
from ml_assets.lib.registry import CANARY, CHAMPION, alias_version
from ml_assets.lib.serving_config import ServingConfig, Strategy
from ml_assets.lib.settings import value

API_VERSION = "serving.kserve.io/v1beta1"
# KServe's ClusterServingRuntime for the `mlflow` model format (MLServer's MLflow runtime). It loads
# the model with mlflow.pyfunc (ml_assets.serving.mlflow_model: landing-contract rows in), so its
# image must carry the version's requirements.txt (lightgbm, polars, deltalake), and the pod must
# read the lake's bronze tables: the features need each card's history.
RUNTIME = "kserve-mlserver"
# What KServe's storage initializer can download. A local path or `mlflow-artifacts:` (the tracking
# server's proxy) is not among them: production keeps artifacts on S3 (ML_ASSETS_MLFLOW_ARTIFACTS).
FETCHABLE_SCHEMES = {"s3", "gs", "https", "http", "hdfs", "webhdfs", "pvc", "oci"}
# The Secret holding the online store's credentials (deploy/secrets.env.example: the code
# location's Secret), and its keys: the user name and password of the store's URL, as written there.
STORE_SECRET = "ml-assets-secrets"
STORE_CREDENTIALS = {"username": "ONLINE_STORE_USERNAME", "password": "ONLINE_STORE_PASSWORD"}


class NoChampion(LookupError):
    pass


@dataclass(frozen=True)
class Rollout:
    """What the registry asks KServe to serve: the champion, and a canary with its traffic share."""

    model_name: str
    champion: str  # version number
    champion_uri: str
    canary: str | None = None
    canary_uri: str | None = None
    canary_percent: int | None = None  # of requests; set only while a canary rolls out


def read_rollout(client, model_name: str) -> tuple[Rollout, list[str]]:
    """The rollout the registry's aliases and tags describe, and what in them KServe can't follow."""
    champion = alias_version(client, model_name, CHAMPION)
    if champion is None:
        raise NoChampion(f"{model_name} has no '{CHAMPION}' alias: nothing to serve yet")
    tags = dict(client.get_registered_model(model_name).tags or {})
    config, problems = ServingConfig.from_tags(tags)
    rollout = Rollout(model_name, champion, client.get_model_version_download_uri(model_name, champion))
    if config.strategy is Strategy.CANARY:
        canary = alias_version(client, model_name, CANARY)
        if canary is None:
            problems.append(f"strategy canary without a '{CANARY}' alias: the champion serves alone")
        else:
            rollout = Rollout(
                model_name, champion, rollout.champion_uri, canary,
                client.get_model_version_download_uri(model_name, canary),
                # KServe takes whole percents: a share below 0.5% rounds to 0 (the canary gets none).
                round(config.canary_share * 100),
            )  # fmt: skip
    elif config.strategy in (Strategy.SHADOW, Strategy.AB):
        # An InferenceService splits traffic only as a canary rollout; a shadow or a sticky A/B
        # split by card needs ml_assets.serving (or an InferenceGraph), so KServe serves the champion.
        problems.append(f"strategy {config.strategy.value} has no InferenceService form: the champion only")
    for uri in filter(None, (rollout.champion_uri, rollout.canary_uri)):
        if urlparse(uri).scheme not in FETCHABLE_SCHEMES:
            problems.append(f"KServe's storage initializer can't fetch {uri}: keep artifacts on S3")
    return rollout, problems


def store_env(url: str | None, secret: str = STORE_SECRET) -> tuple[list[dict], list[str]]:
    """The predictor's environment for the online store at `url`, and what keeps it from one.

    The registered model reads ML_ASSETS_ONLINE_STORE (ml_assets.serving.mlflow_model). Its value
    here is the store's address with `$(NAME)` in place of the user name and password: Kubernetes
    expands a reference to a variable defined before it in the same list, and those come from the
    Secret (`valueFrom.secretKeyRef`). So the manifest, which is reviewed and may be committed,
    never holds a credential. Only Redis is shared by pods: an SQLite store is one host's file.
    """
    from ml_assets.serving.online_store import redacted

    if not url:
        return [], ["no online store given: the predictor reads card history from bronze and records nothing"]
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        return [], [
            f"the online store {redacted(url)} is one host's, not the pods': the predictor reads bronze"
        ]
    env, userinfo = [], ""
    for field, key in STORE_CREDENTIALS.items():
        if getattr(parts, field):
            env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
            userinfo += f"{':' if field == 'password' else ''}$({key})"
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    address = host + (f":{parts.port}" if parts.port else "")
    netloc = f"{userinfo}@{address}" if userinfo else address
    value = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    return [*env, {"name": "ML_ASSETS_ONLINE_STORE", "value": value}], []


def k8s_name(model_name: str) -> str:
    """A DNS-1123 name (Kubernetes object names allow no underscores)."""
    return model_name.lower().replace("_", "-")


def manifest(
    rollout: Rollout,
    namespace: str | None = None,
    service_account: str | None = None,
    env: list[dict] | None = None,
) -> dict:
    """The InferenceService. Under a canary, KServe's rollout semantics shape it:

    KServe keeps the last revision that was rolled out at 100% (the champion, from the manifest this
    command rendered before the canary alias was set) and sends `canaryTrafficPercent` of requests
    to the revision the spec now describes. So the predictor names the *canary's* model, and the
    champion is not in the spec at all: it is the previous revision. Then, as the registry moves:
    - the canary is promoted (champion := canary, canary alias removed): the spec names the same
      model without canaryTrafficPercent, and KServe sends it all traffic;
    - the canary is aborted (canary alias removed): the spec names the champion again, which KServe
      rolls out to all traffic.
    Applying a canary manifest to a new InferenceService gives the canary all traffic (there is no
    previous revision): apply the champion's first. Canary rollouts need KServe's Serverless
    (Knative) mode, hence the annotation.
    """
    served = rollout.canary_uri or rollout.champion_uri
    predictor: dict = {}
    if rollout.canary is not None:
        predictor["canaryTrafficPercent"] = rollout.canary_percent
    if service_account:
        predictor["serviceAccountName"] = service_account  # its IAM role reads the artifact store
    predictor["model"] = {
        "modelFormat": {"name": "mlflow"},
        "runtime": RUNTIME,
        "protocolVersion": "v2",
        "storageUri": served,
    }
    if env:  # the online store (store_env): its address, credentials from the Secret
        predictor["model"]["env"] = env
    # Which registry versions this spec serves, for `kubectl describe` and review.
    annotations = {
        "serving.kserve.io/deploymentMode": "Serverless",
        "ml-assets/registered-model": rollout.model_name,
        "ml-assets/champion-version": rollout.champion,
        "ml-assets/champion-storage-uri": rollout.champion_uri,
    }
    if rollout.canary is not None:
        annotations["ml-assets/canary-version"] = rollout.canary
    k8s = k8s_name(rollout.model_name)
    metadata = {"name": k8s, "namespace": namespace} if namespace else {"name": k8s}
    metadata["labels"] = {"app.kubernetes.io/name": k8s, "app.kubernetes.io/part-of": "ml-assets"}
    metadata["annotations"] = annotations
    return {"apiVersion": API_VERSION, "kind": "InferenceService", "metadata": metadata,
            "spec": {"predictor": predictor}}  # fmt: skip


def render(client, model_name: str, output: Path | None, namespace: str | None = None,
           service_account: str | None = None, online_store: str | None = None,
           store_secret: str = STORE_SECRET) -> tuple[dict, list[str]]:  # fmt: skip
    """Read the registry, build the manifest, write it to `output` (None: stdout)."""
    rollout, problems = read_rollout(client, model_name)
    env, store_problems = store_env(online_store, store_secret)
    problems += store_problems
    doc = manifest(rollout, namespace, service_account, env)
    who = f"champion v{rollout.champion}"
    if rollout.canary is not None:
        who += f" (previous revision), canary v{rollout.canary} at {rollout.canary_percent}%"
    header = f"# Rendered by `python -m ml_assets.kserve` from the MLflow registry: {model_name} {who}.\n"
    text = header + "".join(f"# note: {p}\n" for p in problems) + yaml.safe_dump(doc, sort_keys=False)
    if output is None:
        sys.stdout.write(text)
    else:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    return doc, problems


def main(argv: list[str] | None = None) -> int:
    from mlflow import MlflowClient

    ap = argparse.ArgumentParser(prog="python -m ml_assets.kserve", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-name", default=value("ML_ASSETS_MODEL_NAME"))
    ap.add_argument("--output", help="file to write, '-' for stdout (default: deploy/kserve/<name>.yaml)")
    ap.add_argument("--namespace", help="metadata.namespace (default: kubectl's current namespace)")
    ap.add_argument("--service-account", help="service account whose credentials read the artifact store")
    ap.add_argument(
        "--online-store",
        default=value("ML_ASSETS_ONLINE_STORE"),
        help="the Redis the predictor shares with the service (default: ML_ASSETS_ONLINE_STORE); only "
        "its address is written, its user name and password are read from --online-store-secret",
    )
    ap.add_argument(
        "--online-store-secret",
        default=STORE_SECRET,
        help=f"the Secret with {' and '.join(STORE_CREDENTIALS.values())} (default {STORE_SECRET})",
    )
    args = ap.parse_args(argv)
    if args.output == "-":
        output = None
    else:
        output = Path(
            args.output or paths.REPO_ROOT / "deploy" / "kserve" / f"{k8s_name(args.model_name)}.yaml"
        )
    uri = paths.mlflow_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        _, problems = render(
            client, args.model_name, output, args.namespace, args.service_account,
            args.online_store, args.online_store_secret,
        )  # fmt: skip
    except NoChampion as e:
        print(e, file=sys.stderr)
        return 1
    for problem in problems:
        print(f"note: {problem}", file=sys.stderr)
    if output is not None:
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
