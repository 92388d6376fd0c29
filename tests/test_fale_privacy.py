"""What crosses the network in FALE: every message's content inspected through the InProcessGrid.

No raw feature value or label (training or test split) of any client appears in any message, in
either direction; no mask seed (the shared Q seed, any client's P_i secret) appears in any message;
the sealed Q seed the server relays can only be opened by its recipient.
"""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.exceptions import InvalidTag
from flwr.app import RecordDict

from client_app.app import app as client_app
from client_app.methods.fale import STATE_KEY, open_seed, seal_seed, seed_tag
from fal_shared.config import RunConfig
from fal_shared.experiment_data import client_data
from fedsvd.secure_sum import generate_keypair
from server_app.app import run_experiment
from server_app.inprocess import InProcessGrid

N_CLIENTS = 3


def _values(content: RecordDict) -> tuple[list[float], list[bytes]]:
    """Every number and every byte string in a message's content (arrays, configs, metrics)."""
    numbers: list[float] = []
    blobs: list[bytes] = []
    for record in content.array_records.values():
        for arr in record.to_numpy_ndarrays():
            numbers.extend(np.asarray(arr, dtype=np.float64).ravel().tolist())
            blobs.append(np.ascontiguousarray(arr).tobytes())
    for record in [*content.config_records.values(), *content.metric_records.values()]:
        for value in record.values():
            items = value if isinstance(value, list) else [value]
            for v in items:
                if isinstance(v, bytes):
                    blobs.append(v)
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    numbers.append(float(v))
                elif isinstance(v, str):
                    blobs.append(v.encode())
    return numbers, blobs


def _run_and_collect(tmp_path, strategy):
    """Run FALE on diabetes through an InProcessGrid that records every message both ways."""
    run_config = {
        **RunConfig().to_flower(), "strategy": strategy, "dataset": "diabetes", "seed": 1, "num-cycles": 1,
        "rounds-per-cycle": 1, "local-epochs": 1, "evaluation": "federated", "fale-budget-count": 50,
        "fale-block-size": 16, "run-name": "p", "output-dir": str(tmp_path / "o"), "state-dir": str(tmp_path / "s"),
        "num-clients": N_CLIENTS,
    }
    grid = InProcessGrid(client_app, run_config, [{"partition-id": i, "num-partitions": N_CLIENTS} for i in range(N_CLIENTS)])
    seen: list[tuple[str, str, RecordDict]] = []
    original = grid.send_and_receive

    def inspect(messages, *, timeout=None):
        messages = list(messages)
        seen.extend(("to client", m.metadata.message_type, m.content) for m in messages)
        replies = list(original(messages, timeout=timeout))
        seen.extend(("to server", r.metadata.message_type, r.content) for r in replies if r.has_content())
        return replies

    grid.send_and_receive = inspect
    results = run_experiment(grid, run_config)
    assert results["status"] == "completed" and results["cycles"][1]["labeled"] == 50
    kinds = {kind for _, kind, _ in seen}
    assert {"query.fale_keys", "query.fale_authority", "query.fale_mask", "query.fale_scores", "query.fale_label"} <= kinds

    cfg = RunConfig.model_validate(run_config)
    parts = [client_data(cfg, p, N_CLIENTS) for p in range(N_CLIENTS)]
    raw = np.concatenate([
        np.concatenate([p.x.astype(np.float64).ravel(), p.y, p.x_test.astype(np.float64).ravel(), p.y_test]) for p in parts
    ])
    assert raw.size > 4000
    numbers, blobs = [], []
    for _, _, content in seen:
        n, b = _values(content)
        numbers += n
        blobs += b
    numbers = np.asarray(numbers)
    assert numbers.size > 2 * 354 * 10  # X' and U' alone hold n x d values each (n = 354, d = 10)
    return numbers, blobs, raw, grid


@pytest.mark.parametrize("strategy", ["fale", "fale-local"])
def test_no_raw_data_or_seed_in_any_message(tmp_path, strategy):
    numbers, blobs, raw, grid = _run_and_collect(tmp_path, strategy)
    leaked = np.isin(numbers, raw)
    assert not leaked.any(), f"raw values in messages: {numbers[leaked][:5]}"

    # the secrets each node holds never appear in any message (nor inside any larger byte string)
    states = [dict(ctx.state.config_records[STATE_KEY]) for ctx in grid.contexts.values()]
    q_seeds = {bytes(s["q-seed"]) for s in states}
    assert len(q_seeds) == 1  # every client holds the same Q seed
    secrets = [bytes(s["secret"]) for s in states] + list(q_seeds)
    assert len(set(secrets)) == N_CLIENTS + 1 and all(len(s) == 16 for s in secrets)
    for secret in secrets:
        assert not any(secret in blob for blob in blobs)


def test_the_inspection_catches_an_unmasked_block(tmp_path, monkeypatch):
    """Control: a client that skipped the masking would be caught by the check above."""
    from fedsvd import FedSVDClient

    monkeypatch.setattr(FedSVDClient, "mask_data", lambda self: self._x.copy())
    numbers, _, raw, _ = _run_and_collect(tmp_path, "fale")
    assert np.isin(numbers, raw).sum() >= 354 * 10


def test_sealed_seed_opens_only_for_its_recipient():
    authority_sk, authority_pk = generate_keypair()
    client_sk, client_pk = generate_keypair()
    server_sk, _ = generate_keypair()  # what the server could make: keys of its own, not the clients'
    seed = bytes(range(16))
    tag = seed_tag("run", 0, recipient=1)
    sealed = seal_seed(authority_sk, client_pk, seed, tag)
    assert seed not in sealed and len(sealed) == 12 + 16 + 16
    assert open_seed(client_sk, authority_pk, sealed, tag) == seed
    with pytest.raises(InvalidTag):
        open_seed(server_sk, authority_pk, sealed, tag)  # the relaying server
    with pytest.raises(InvalidTag):
        open_seed(client_sk, authority_pk, sealed, seed_tag("run", 0, recipient=2))  # replayed to another client
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(InvalidTag):
        open_seed(client_sk, authority_pk, bytes(tampered), tag)
    # fresh nonce per sealing: the same seed sealed twice gives different ciphertexts
    assert seal_seed(authority_sk, client_pk, seed, tag) != sealed
