"""Owners' fine-tunes in process: registered from a directory of weights, checked against their base,
listed and deployed on their base's shapes, and nobody else's to deploy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dedicate.domain.offerings import CATALOG_PROJECT, model_id
from tests.api.conftest import App

TINY = "dedicate/tiny-chat"
TINY_CONFIG = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
               "intermediate_size": 128, "vocab_size": 2000}


def weights(app: App, owner: str, name: str, config: dict[str, Any] | None = None,
            adapter: dict[str, Any] | None = None) -> str:
    """A directory of (stand-in) weights under the model root, as an operator would put them."""
    d = app.parts.settings.models_dir / "owners" / owner / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    if adapter is not None:
        (d / "adapter_config.json").write_text(json.dumps(adapter))
    else:
        (d / "config.json").write_text(json.dumps(config or TINY_CONFIG))
    return str(d.relative_to(app.parts.settings.models_dir))


def register(app: App, body: dict[str, Any], key: str | None = None, project: str = "proj_admin") -> Any:
    return app.client.post(f"/v2/projects/{project}/models", json=body, headers=app.as_(key) if key else {})


def test_a_fine_tune_of_a_supported_base_registers_lists_and_has_its_bases_shapes(app: App) -> None:
    resp = register(app, {"name": "tiny-ft", "baseModelId": model_id(TINY), "path": weights(app, "admin", "ft")})
    assert resp.status_code == 200, resp.text
    m = resp.json()
    assert m["name"] == "admin/tiny-ft" and m["id"] == model_id("admin/tiny-ft")
    assert m["baseModelId"] == model_id(TINY) and m["weights"]["type"] == "WEIGHTS_TYPE_DEFAULT"
    listed = app.client.get("/v2/projects/proj_admin/models").json()["data"]
    assert [x["id"] for x in listed] == [m["id"]]
    assert app.client.get(f"/v2/projects/proj_admin/models/{m['id']}").json()["name"] == "admin/tiny-ft"
    configs = app.client.get("/v2/projects/proj_admin/configs", params={"referenceModelId": m["id"]}).json()["data"]
    hardware = {dict((s["key"], s["value"]) for s in c["selectors"])["hardware"] for c in configs}
    base = app.client.get("/v2/projects/proj_admin/configs", params={"referenceModelId": model_id(TINY)}).json()
    assert hardware == {dict((s["key"], s["value"]) for s in c["selectors"])["hardware"] for c in base["data"]}
    assert all(c["referenceModelId"] == m["id"] for c in configs)
    again = register(app, {"name": "tiny-ft", "baseModelId": TINY, "path": weights(app, "admin", "ft")})
    assert again.status_code == 409


def test_a_registered_fine_tune_deploys_as_its_own_model_on_a_config_of_its_own(app: App) -> None:
    m = register(app, {"name": "tiny-ft", "baseModelId": TINY, "path": weights(app, "admin", "ft")}).json()
    (config,) = [c for c in app.client.get("/v2/projects/proj_admin/configs",
                                           params={"referenceModelId": m["id"]}).json()["data"]
                 if {"key": "hardware", "value": "1x_cpu"} in c["selectors"]]
    ep = app.client.post("/v2/projects/proj_admin/endpoints", json={"name": "chat"}).json()
    resp = app.client.post(f"/v2/projects/proj_admin/endpoints/{ep['id']}/deployments", json={
        "name": "ft", "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
        "model": f"projects/proj_admin/models/{m['id']}", "config": f"projects/proj_admin/configs/{config['id']}"})
    assert resp.status_code == 200, resp.text
    dep = resp.json()
    assert dep["modelId"] == m["id"]
    v1 = app.client.get(f"/v1/endpoints/{dep['legacyId']}").json()
    assert v1["model"] == "admin/tiny-ft" and v1["hardware"] == "1x_cpu"
    spec = app.parts.settings.catalog.models["admin/tiny-ft"]
    assert Path(spec.source) == app.parts.settings.models_dir.resolve() / "owners" / "admin" / "ft", \
        "its replicas load the registered weights"


@pytest.mark.parametrize(("body", "says"), [
    ({"baseModelId": "meta-llama/Llama-3.1-8B"}, "must be based on a supported base model"),
    ({"config": {**TINY_CONFIG, "num_hidden_layers": 3}}, "num_hidden_layers"),
    ({"config": {**TINY_CONFIG, "model_type": "mistral"}, "base_config": True}, "model_type"),
    ({"adapter": {"base_model_name_or_path": "Qwen/Qwen2.5-7B-Instruct"}, "type": "WEIGHTS_TYPE_ADAPTER"},
     "not the base model"),
    ({"path": "../../etc"}, "is not under"),
    ({"path": "owners/bob/theirs"}, "is not under"),
    ({"name": "Bad Name"}, "name"),
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_registration_says_what_is_wrong_and_stores_nothing(app: App, body: dict[str, Any], says: str) -> None:
    erin = app.client.post("/v1/keys", json={"owner": "erin"}).json()["key"]
    if body.pop("base_config", False):  # the base's own config.json at hand: compared whole
        base = app.parts.settings.models_dir / "tiny-chat"
        base.mkdir(parents=True, exist_ok=True)
        (base / "config.json").write_text(json.dumps(TINY_CONFIG))
    path = weights(app, "erin", "ft", body.pop("config", None), body.pop("adapter", None))
    weights(app, "bob", "theirs")
    req = {"name": "ft", "baseModelId": TINY, "path": path, **body}
    resp = register(app, req, erin, "proj_erin")
    assert 400 <= resp.status_code < 500, resp.text
    assert says in json.dumps(resp.json()["error"]), resp.text
    assert app.client.get("/v2/projects/proj_erin/models", headers=app.as_(erin)).json()["data"] == []
    shutil.rmtree(app.parts.settings.models_dir, ignore_errors=True)


def test_another_owners_fine_tune_is_not_theirs_to_deploy_or_read(app: App) -> None:
    m = register(app, {"name": "tiny-ft", "baseModelId": TINY, "path": weights(app, "admin", "ft")}).json()
    erin = app.client.post("/v1/keys", json={"owner": "erin"}).json()["key"]
    v1 = app.client.post("/v1/endpoints", headers=app.as_(erin), json={
        "model": "admin/tiny-ft", "hardware": "1x_cpu", "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
    assert v1.status_code == 400 and "not supported" in v1.json()["error"]["message"]
    assert app.client.get(f"/v2/projects/proj_erin/models/{m['id']}", headers=app.as_(erin)).status_code == 404
    assert app.client.get(f"/v2/projects/{CATALOG_PROJECT}/models/{m['id']}", headers=app.as_(erin)).status_code \
        == 404


def test_weights_uploaded_a_file_at_a_time_register_as_a_fine_tune(app: App) -> None:
    base = "/v2/projects/proj_admin/uploads/ft/files"
    config = json.dumps(TINY_CONFIG).encode()
    one = app.client.put(f"{base}/config.json", content=config)
    assert one.status_code == 200, one.text
    assert one.json()["directory"] == "owners/admin/uploads/ft" and one.json()["bytes"] == str(len(config))
    two = app.client.put(f"{base}/model.safetensors", content=b"\0" * 64)
    assert two.json()["uploadBytes"] == str(len(config) + 64)
    again = app.client.put(f"{base}/model.safetensors", content=b"\0" * 32)  # sent again whole: replaced
    assert again.json()["uploadBytes"] == str(len(config) + 32)
    m = register(app, {"name": "uploaded", "baseModelId": TINY, "path": one.json()["directory"]})
    assert m.status_code == 200, m.text
    on_disk = app.parts.settings.models_dir / "owners" / "admin" / "uploads" / "ft"
    assert sorted(p.name for p in on_disk.iterdir()) == ["config.json", "model.safetensors"]


def test_an_upload_over_the_cap_or_to_a_bad_path_is_refused_and_leaves_nothing(app: App) -> None:
    from dataclasses import replace

    app.parts.services.settings = replace(app.parts.settings, max_upload_bytes=100)
    base = "/v2/projects/proj_admin/uploads/big/files"
    assert app.client.put(f"{base}/a.bin", content=b"\0" * 60).status_code == 200
    over = app.client.put(f"{base}/b.bin", content=b"\0" * 60)
    assert over.status_code == 413 and "at most 100 bytes" in over.json()["error"]["message"], over.text

    def chunks() -> Any:
        yield b"\0" * 30
        yield b"\0" * 30  # no length declared: refused while streaming, at the byte past the cap
    streamed = app.client.put(f"{base}/c.bin", content=chunks())
    assert streamed.status_code == 413, streamed.text
    on_disk = app.parts.settings.models_dir / "owners" / "admin" / "uploads" / "big"
    assert sorted(p.name for p in on_disk.iterdir()) == ["a.bin"], "nothing half-written"
    for bad in ("../escape.bin", "a/../../b.bin", ".hidden", "x/y/z/w/v.bin"):
        resp = app.client.put(f"{base}/{bad}", content=b"\0")
        assert resp.status_code in (400, 404), (bad, resp.status_code, resp.text)
    erin = app.client.post("/v1/keys", json={"owner": "erin"}).json()["key"]
    assert app.client.put(f"{base}/d.bin", content=b"\0", headers=app.as_(erin)).status_code == 404


def test_a_registered_model_is_deleted_once_nothing_runs_it(app: App) -> None:
    m = register(app, {"name": "tiny-ft", "baseModelId": TINY, "path": weights(app, "admin", "ft")}).json()
    v1 = app.client.post("/v1/endpoints", json={"model": "admin/tiny-ft", "hardware": "1x_cpu",
                                                "autoscaling": {"min_replicas": 1, "max_replicas": 1}})
    assert v1.status_code == 200, v1.text
    busy = app.client.delete(f"/v2/projects/proj_admin/models/{m['id']}")
    assert busy.status_code == 409 and v1.json()["name"] in busy.json()["error"]["message"]
    assert app.client.delete(f"/v1/endpoints/{v1.json()['id']}").status_code == 204
    assert app.client.delete(f"/v2/projects/proj_admin/models/{m['id']}").status_code == 204
    assert app.client.get(f"/v2/projects/proj_admin/models/{m['id']}").status_code == 404
    again = register(app, {"name": "tiny-ft", "baseModelId": TINY, "path": weights(app, "admin", "ft")})
    assert again.status_code == 200, "the name is free again"


def test_pickled_weights_and_paths_out_of_the_model_root_are_refused(app: App, tmp_path: Path) -> None:
    pickled = app.parts.settings.models_dir / weights(app, "admin", "pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"\x80\x04")
    r = register(app, {"name": "pickled", "baseModelId": TINY, "path": str(pickled)})
    assert r.status_code == 400 and "only pickled ones (*.bin)" in r.json()["error"]["message"]
    assert "convert them to safetensors" in r.json()["error"]["message"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"\0" * 16)
    link = app.parts.settings.models_dir / "owners" / "admin" / "link-out"
    link.symlink_to(outside)
    erin = app.client.post("/v1/keys", json={"owner": "erin"}).json()["key"]
    for path in (str(outside), "../../etc", str(link), "owners/admin/../../../"):
        refused = register(app, {"name": "escape", "baseModelId": TINY, "path": path})
        assert refused.status_code == 400 and "not under" in refused.json()["error"]["message"], (path, refused.text)
    # dedicate fetches nothing: a URL (file:, loopback, link-local, private) is no directory of weights here
    for url in ("file:///etc", "http://127.0.0.1:8700/weights", "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.7/w", "https://[::1]/w"):
        refused = register(app, {"name": "fetched", "baseModelId": TINY, "path": url})
        assert refused.status_code == 400 and "never fetches" in refused.json()["error"]["message"], (url, refused.text)
    theirs = register(app, {"name": "theirs", "baseModelId": TINY, "path": weights(app, "admin", "ft2")}, key=erin,
                      project="proj_erin")
    assert theirs.status_code == 400 and "not under" in theirs.json()["error"]["message"], "another owner's weights"
