"""FALE and FALE-local: one-pass global selection by leverage scores over FedSVD (Tang et al., ICML 2025).

``fale`` (Algorithm 1 + Sec. 4.2) and ``fale-local`` (Algorithm 2, App. A.2) run as query rounds of
the FAL loop (client side: ``client_app/methods/fale.py``; linear algebra: :mod:`fedsvd`):

====================  =========================================  =====================================
round                 server -> client                           client -> server
====================  =========================================  =====================================
``fale_keys``         --                                         X25519 public key, ``n_i``
``fale_authority``    all public keys (authority client only)    ``Q`` seed sealed per client (AES-GCM)
``fale_mask``         the client's sealed ``Q`` seed             ``X'_i = P_i X_i Q``
``fale_scores``       ``U'_i`` (first ``rank`` columns)          leverage scores ``tau_i``
``fale_label``        selected rows, multiplicities, row scales  (labels bought locally)
                                                                 FALE: ``P~_i S_i [X^L_i Q, y^L_i]``
``fale_model``        FALE: ``theta_hat``                        -- (clients keep ``theta = Q theta_hat``)
====================  =========================================  =====================================

Between ``fale_mask`` and ``fale_scores`` the server stacks the masked blocks and takes the thin SVD
(:func:`fedsvd.server_svd`); between ``fale_scores`` and ``fale_label`` it samples i.i.d. from ``p =
tau / sum(tau)`` until ``n_q`` distinct rows are drawn (:func:`fedsvd.sample_until_distinct`,
budget ``fale-budget-count`` or ``fale-budget-fraction``); after ``fale_label`` it solves the
masked weighted least squares (:func:`fedsvd.masked_least_squares`). FALE's model never exists in
the clear on the server, so the loop does not train (:meth:`FaleStrategy.train_rounds` = 0) and
evaluates federatedly the model each client unmasked (``evaluation = "federated"`` is required).
FALE-local stops after the labels are bought and the loop's FedAvg trains the linear model on them
in the next cycle. Both need no initial labels.

Several cycles: a learning curve in one run
-------------------------------------------
With ``num-cycles = C`` query ``c`` (0-based) raises the selection to ``n_q(c) = ceil(n_q (c+1) / C)``
distinct rows (:func:`fale_cycle_budget`; ``n_q`` = ``fale-budget-count`` or
``fale-budget-fraction``), so the run evaluates FALE at ``C`` budgets, the last one ``n_q``. The
FedSVD rounds (1-4) run once, at the first query; the leverage scores stay on the server
(``phase.state``) and every later query only continues the same sampling stream (the stream is
re-seeded identically and drawn further: the selection at a larger budget extends the smaller one's
draws, nested as in ``benchmarks/fale_benchmark.py``). Each client buys only the rows it does not
hold yet; FALE then refits on every selected row with the weights of the current budget (``n_s``
and the multiplicities grow), masked with a fresh ``P~_i`` per query. ``num-cycles = 1`` is the
paper's one-pass algorithm. FALE's own defaults (:meth:`FaleStrategy.run_defaults`, applied to the
keys the user did not set): ``num-cycles = 10`` (the paper's Table 2 compares at 10%, 20%, ...,
100% of the budget) and ``evaluation = "federated"``.

Who holds what (the paper's trusted authority made explicit)
--------------------------------------------------------------
* ``Q`` (``d x d``, shared): its seed is drawn by the **authority client**, the participant with the
  lowest partition id, and sent to every other client sealed with AES-256-GCM under the X25519 +
  HKDF key of that pair; the server relays the sealed seeds and public keys and cannot open them.
* ``P_i`` (``n_i x n_i``) and the fresh ``P~_i`` of the labelled rows: only client ``i`` ever
  applies them, so client ``i`` draws their seed itself (OS entropy) and never sends it. (The
  paper's authority hands out ``P_i`` too; nobody needs it but client ``i``.)
* The server holds no seed. All seeds come from OS entropy, not from the run seed (which the
  server knows). Selections still follow the run seed: leverage scores do not depend on the masks
  (up to float round-off) and the server's sampling stream is ``SeedSequence(seed).spawn(3)[1]``,
  the stream :func:`fedsvd.fale_fit` uses for the same seed, so the in-process library path
  reproduces the app (tests/test_fale_e2e.py).

What the server can learn (honest-but-curious; see also :mod:`fedsvd`)
------------------------------------------------------------------------
Masking is not encryption. **The server learns every client's ``X_i`` up to an orthogonal
transform** (the known criticism of FedSVD): each ``X'_i = P_i X_i Q`` arrives separately, so it
learns the singular values and the Gram matrix ``X_i^T X_i`` of every client up to the common
rotation ``Q`` (and, because ``P_i`` is block diagonal, of every block of ``fale-block-size``
consecutive rows), the joint invariants across clients, and ``n_i``. It learns every row's
leverage score in the clear (which rows are outlying), the selection with its weights, the
weighted Gram of every client's labelled ``[X^L_i Q, y^L_i]`` (hence each client's local weighted
least-squares fit in masked coordinates, ``||S_i y^L_i||`` and residual norms) and ``theta_hat =
Q^T theta``. It cannot learn individual rows of ``X_i``, labels, ``Q``, ``P_i`` or ``theta`` as long
as no client colludes with it: every client holds ``Q``, so one colluding client gives the server
``P_i X_i`` (hence ``X_i^T X_i`` exactly) and ``theta`` in the clear; known rows of ``X`` also
reveal ``Q``. An *active* server could substitute public keys in ``fale_keys``/``fale_authority``
and open the ``Q`` seed (man in the middle): deployments that do not trust the server to relay
keys faithfully need authenticated keys (e.g. pinned per node), which this app does not provide.

Clients learn ``U_i`` of their own rows; a client with full-column-rank ``U_i`` can solve for ``S
V^T`` and so learns the global Gram ``X^T X``. FALE accepts that.

Over several cycles the server gets one masked weighted labelled block per client and query, so it
learns each client's weighted Gram of ``[X^L_i Q, y^L_i]`` at every budget of the curve, not only
at the last one (differences between budgets concern the newly selected rows, under changed
weights); ``num-cycles = 1`` reveals only the final one, as the paper's single pass.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fal_shared.wire import config_of
from strategies.base import FALStrategy, QueryPhase, register_strategy

__all__ = ["FaleLocalStrategy", "FaleStrategy", "fale_budget", "fale_cycle_budget", "sampling_seed"]

#: FALE's own defaults for keys the user did not set (see the module docstring)
FALE_NUM_CYCLES = 10  # FALE Table 2: paired t-tests at 10%, 20%, ..., 100% of the query budget

#: the client state key of FALE's unmasked model (client_app.methods.fale.MODEL_KEY)
MODEL_KEY = "fale-model"


def sampling_seed(seed: int) -> np.random.SeedSequence:
    """The server's sampling stream: the one :func:`fedsvd.fale_fit` uses for the same seed."""
    return np.random.SeedSequence(seed).spawn(3)[1]


def fale_budget(cfg, total: int) -> int:
    """``n_q``: ``fale-budget-count``, or ``ceil(fale-budget-fraction x total)`` when the count is 0."""
    if cfg.fale_budget_count > 0:
        n_q = cfg.fale_budget_count
        if n_q > total:
            raise ValueError(
                f"fale-budget-count: {n_q} labels asked for, but all clients together hold {total} samples"
            )
        return n_q
    return max(1, min(total, math.ceil(cfg.fale_budget_fraction * total - 1e-9)))


def fale_cycle_budget(n_query: int, cycle: int, num_cycles: int) -> int:
    """Distinct rows selected after query ``cycle`` (0-based) of ``num_cycles``: ``ceil(n_q (cycle+1) / C)``."""
    return max(1, -(-n_query * (cycle + 1) // max(1, num_cycles)))


def _arrays(reply: RecordDict, key: str) -> list[np.ndarray]:
    return reply.array_records[key].to_numpy_ndarrays()


@register_strategy("fale")
class FaleStrategy(FALStrategy):
    """FALE: FedSVD leverage-score sampling, then masked weighted least squares on the server."""

    tasks = ("regression",)
    initial_labels = False
    description = (
        "one-pass global selection by leverage scores over FedSVD, importance-weighted masked least "
        "squares on the server, unmasked on the clients (linear model; federated evaluation)"
    )
    source = "Tang et al. ICML 2025 (FALE) Alg. 1, Sec. 4.2; FedSVD (Chai et al. KDD 2022)"
    #: FALE-local: FedAvg on the bought labels instead of the masked least squares
    local_training: ClassVar[bool] = False

    @classmethod
    def run_defaults(cls, cfg) -> dict[str, Any]:
        defaults: dict[str, Any] = {"num-cycles": FALE_NUM_CYCLES}
        if not cls.local_training:
            defaults["evaluation"] = "federated"
        return defaults

    def validate(self) -> None:
        super().validate()
        cfg = self.cfg
        if cfg.resolved_model() != "linear":
            raise ValueError(f"model: {self.name} fits a linear regression model; set model=linear or auto")
        if not self.local_training and cfg.evaluation != "federated":
            raise ValueError(
                'evaluation: fale never holds the model in the clear on the server (the clients unmask it), '
                'so it needs evaluation="federated" (each client evaluates on its held-out split; FALE\'s own '
                'default when evaluation is not set)'
            )

    def train_rounds(self, cycle: int) -> int:
        return self.cfg.rounds_per_cycle if self.local_training else 0

    def evaluation_model_key(self, cycle: int, state) -> str | None:
        return MODEL_KEY if (not self.local_training and state.get("fale-fitted")) else None

    # ------------------------------------------------------------------ protocol
    def query(self, phase: QueryPhase) -> None:
        from fedsvd import masked_least_squares, sample_until_distinct

        cfg, cycle = self.cfg, phase.cycle
        if "fale-svd" not in phase.state:  # the first query: FedSVD and the leverage scores, once per run
            phase.state["fale-svd"] = self._fedsvd(phase)
        svd = phase.state["fale-svd"]
        # (a resumed run's state comes from the checkpoint's JSON: tau is a list there)
        pids, sizes, tau = svd["pids"], svd["sizes"], np.asarray(svd["tau"], dtype=np.float64)
        if sorted(phase.clients) != pids:
            raise RuntimeError(f"FALE: the clients changed since the FedSVD of cycle {svd['cycle']} ({pids})")
        n_total = fale_budget(cfg, sum(sizes))
        n_query = fale_cycle_budget(n_total, cycle, cfg.num_cycles)

        # server: sampling with replacement until n_q distinct (Algorithm 1, lines 5-12); the same
        # stream every cycle, drawn further for a larger n_q (nested selections)
        try:
            selection = sample_until_distinct(tau, n_query, seed=sampling_seed(cfg.seed), max_draws=cfg.fale_max_draws)
        except ValueError as err:
            raise ValueError(f"fale-budget-count: {err}") from None
        except RuntimeError as err:
            raise RuntimeError(f"fale-max-draws: {err}") from None
        per_client = selection.per_client(sizes)

        # 5. selection to the clients; they buy the labels (FALE: and send the masked labelled data)
        contents = {}
        for p, sel in zip(pids, per_client, strict=True):
            arrays = ArrayRecord(numpy_ndarrays=[
                sel.local_indices.astype(np.int64), sel.counts.astype(np.int64), sel.row_scales.astype(np.float64)
            ])
            conf = {"token": f"cycle-{cycle}-{self.name}", "strategy": self.name, "mask-labelled": not self.local_training,
                    "fedsvd-cycle": svd["cycle"]}
            contents[p] = self._content(cycle, conf, selection=arrays)
        labelled = phase.send("fale_label", contents)
        for p in pids:
            result = config_of(labelled[p], "result")
            phase.selected[p] = np.asarray(result.get("selected-ids", []), dtype=np.int64)
            phase.clients[p].labeled = int(result["labeled"])
            phase.clients[p].pool_size = int(result["pool-size"])
            phase.budgets[p] = int(phase.selected[p].size)  # recorded as this cycle's budgets

        # 6. FALE: masked weighted least squares on the server, theta_hat to the clients
        if not self.local_training:
            a_parts, b_parts = zip(*(_arrays(labelled[p], "masked-labelled") for p in pids), strict=True)
            theta_hat = masked_least_squares(list(a_parts), list(b_parts))
            phase.broadcast("fale_model", {"fedsvd-cycle": svd["cycle"]},
                            records={"theta-hat": ArrayRecord(numpy_ndarrays=[theta_hat])})
            phase.state["fale-fitted"] = True

        phase.record("fale", {
            "n-query": n_query,
            "n-query-total": n_total,
            "n-draws": selection.n_draws,
            "fedsvd-cycle": svd["cycle"],
            "rank": svd["rank"],
            "num-features": svd["num-features"],
            "authority-partition": svd["authority"],
            "block-size": cfg.fale_block_size,
            "leverage-score-sum": float(tau.sum()),
            "singular-values": svd["singular-values"],
            "selected-per-client": {str(p): int(sel.local_indices.size) for p, sel in zip(pids, per_client, strict=True)},
            "draws-per-client": {str(p): int(sel.counts.sum()) for p, sel in zip(pids, per_client, strict=True)},
        })

    def _fedsvd(self, phase: QueryPhase) -> dict[str, Any]:
        """Rounds 1-4: keys, the sealed Q seed, masked blocks, server SVD, leverage scores (kept in ``phase.state``)."""
        from fedsvd import numerical_rank, server_svd

        cycle = phase.cycle
        pids = sorted(phase.clients)
        authority = pids[0]

        # 1. key pairs (and n_i)
        keys = phase.broadcast("fale_keys")
        results = {p: config_of(keys[p], "result") for p in pids}
        sizes = [int(results[p]["num-samples"]) for p in pids]
        total = sum(sizes)
        fale_budget(self.cfg, total)  # a budget larger than the data fails before any masking

        # 2. the authority client seals the Q seed for every other client (the server relays it)
        public = ConfigRecord({str(p): bytes(results[p]["public-key"]) for p in pids})
        sealed = config_of(
            phase.send("fale_authority", {authority: self._content(cycle, {}, public_keys=public)})[authority], "result"
        )

        # 3. masked blocks X'_i = P_i X_i Q
        contents = {}
        for p in pids:
            conf: dict[str, Any] = {"authority": authority, "authority-public-key": bytes(sealed["authority-public-key"])}
            if p != authority:
                conf["sealed-q-seed"] = bytes(sealed[f"sealed-{p}"])
            contents[p] = self._content(cycle, conf)
        masked = phase.send("fale_mask", contents)
        parts = {p: _arrays(masked[p], "masked")[0] for p in pids}
        for p, n_i in zip(pids, sizes, strict=True):
            if parts[p].shape[0] != n_i:
                raise RuntimeError(f"FALE: partition {p} sent {parts[p].shape[0]} masked rows, announced {n_i}")
        nonempty = [p for p in pids if parts[p].shape[0] > 0]
        if not nonempty:
            raise ValueError("FALE: no client holds any sample")

        # server: thin SVD of the stacked masked matrix (V'^T is not needed by FALE and not sent)
        u_blocks, s, _ = server_svd([parts[p] for p in nonempty])
        d = parts[nonempty[0]].shape[1]
        rank = numerical_rank(s, (total, d))
        if rank == 0:
            raise ValueError("FALE: the clients' feature matrix is zero (rank 0): nothing to select by leverage")
        u_by_pid = dict(zip(nonempty, u_blocks, strict=True))
        del parts, masked

        # 4. masked left factors back; leverage scores in
        contents = {}
        for p in pids:
            u = u_by_pid.get(p, np.zeros((0, d)))[:, :rank]
            contents[p] = self._content(cycle, {}, **{"left-factor": ArrayRecord(numpy_ndarrays=[np.ascontiguousarray(u)])})
        scores = phase.send("fale_scores", contents)
        tau = np.concatenate([_arrays(scores[p], "scores")[0] for p in pids])
        return {
            "cycle": cycle, "pids": pids, "sizes": sizes, "tau": tau, "rank": rank, "num-features": d,
            "authority": authority, "singular-values": [float(v) for v in s],
        }

    @staticmethod
    def _content(cycle: int, config: dict[str, Any], **records: Any) -> RecordDict:
        items: dict[str, Any] = {"config": ConfigRecord({"cycle": cycle, **config})}
        items.update({k.replace("_", "-"): v for k, v in records.items()})
        return RecordDict(items)


@register_strategy("fale-local")
class FaleLocalStrategy(FaleStrategy):
    """FALE-local: FALE's global selection, then FedAvg of the linear model on the bought labels."""

    description = (
        "FALE's one-pass global leverage-score selection over FedSVD, then local training and FedAvg "
        "of the linear model (no importance weights)"
    )
    source = "Tang et al. ICML 2025 (FALE) Alg. 2, App. A.2"
    local_training = True
