"""The Label Studio oracle: queried samples become tasks in a site's Label Studio project.

Per query, it creates one task per chosen sample (the image, or a table of the
features for tabular data), with the global model's prediction as a
pre-annotation and the selector's pick order as the task's ``priority``
(the project's "FAL: by priority" tab lists the most useful first). It reads
finished annotations back: a choice or number is a label, the Skip button or
the "Unclear" choice a skipped sample. Every task carries ``fal_query`` =
``<run>/<partition>/<token>``, so several runs and sites may share a project
and nothing is created twice. Uses the Label Studio SDK (``label-studio-sdk``
2.x) with the URL, token and project from the node config.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from client_app.oracle import Answer, LabelRequest, OracleUnavailable, PersonOracle
from fal_shared.settings.labeling import NodeLabelingConfig

__all__ = ["LabelStudioOracle", "label_config"]

CONTROL = "label"  # the control tag whose value is the label
UNCLEAR = "Unclear"
QUERY_FIELD = "fal_query"
VIEW_TITLE = "FAL: by priority"


def label_config(task: str, num_classes: int) -> str:
    """The project's labeling interface: the sample, and class choices (+ Unclear) or a number."""
    header = '<Header value="Sample $sample_id of query $query (priority $priority)"/>'
    if task == "classification":
        choices = "".join(f'<Choice value="{c}"/>' for c in range(num_classes))
        return (
            f'<View>{header}<Image name="image" value="$image" zoom="true"/>'
            f'<Choices name="{CONTROL}" toName="image" choice="single-radio" showInline="true" required="true">'
            f'{choices}<Choice value="{UNCLEAR}"/></Choices></View>'
        )
    return (
        f'<View>{header}<Table name="features" value="$features"/>'
        f'<Number name="{CONTROL}" toName="features" required="true"/></View>'
    )


class LabelStudioOracle(PersonOracle):
    name = "label-studio"

    def __init__(self, conf: NodeLabelingConfig) -> None:
        self.url = conf.label_studio_url.rstrip("/")
        self.conf = conf
        self._clients: dict[str, Any] = {}
        self._projects: dict[str, int] = {}

    # ------------------------------------------------------------- plumbing
    def _token(self) -> str:
        if self.conf.label_studio_token_file:
            path = Path(self.conf.label_studio_token_file).expanduser()
            try:
                return path.read_text().strip()
            except OSError as err:
                raise ValueError(f"node config label-studio-token-file: cannot read {path}: {err}") from None
        return self.conf.label_studio_token

    def _ls(self):
        from label_studio_sdk import LabelStudio

        token = self._token()
        if token not in self._clients:
            self._clients[token] = LabelStudio(base_url=self.url, api_key=token, timeout=60)
        return self._clients[token]

    def _call(self, what: str, fn, *args, **kwargs):
        """One SDK call; an unreachable server is :class:`OracleUnavailable`, a refusal a clear error."""
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            return fn(*args, **kwargs)
        except httpx.TransportError as err:
            raise OracleUnavailable(f"Label Studio at {self.url} is unreachable ({what}: {err})") from None
        except ApiError as err:
            code = err.status_code or 0
            if code >= 500 or code in (408, 429):
                raise OracleUnavailable(f"Label Studio at {self.url} answered {code} ({what})") from None
            hint = {401: "check label-studio-token", 403: "the token's user may not do this",
                    404: "check label-studio-project"}.get(code, "")
            raise RuntimeError(f"Label Studio at {self.url} refused {what} ({code}: {str(err.body)[:200]}); {hint}") from None

    def project_spec(self, request: LabelRequest) -> str | int:
        return self.conf.label_studio_project or f"FAL {request.run_name} partition {request.partition_id}"

    def describe(self, request: LabelRequest) -> dict[str, Any]:
        return {"url": self.url, "project": self.project_spec(request)}

    def project(self, request: LabelRequest) -> int:
        """The project's id: by id (checked), or by title (created with :func:`label_config` when missing)."""
        spec = self.project_spec(request)
        key = f"{spec}|{request.task}|{request.num_classes}"
        if key in self._projects:
            return self._projects[key]
        ls = self._ls()
        wanted = label_config(request.task, request.num_classes)
        if isinstance(spec, int) or str(spec).isdigit():
            project = self._call(f"GET project {spec}", ls.projects.get, id=int(spec))
        else:
            found = [p for p in self._call("list projects", ls.projects.list, title=str(spec)) if p.title == str(spec)]
            if found:
                project = found[0]
            else:
                project = self._call("create project", ls.projects.create, title=str(spec), label_config=wanted,
                                     description="Samples chosen by federated active learning (fal-flower).")
                self._call("create view", ls.views.create, project=project.id,
                           data={"title": VIEW_TITLE, "ordering": ["-tasks:data.priority"]})
        self._check_config(project, request)
        self._projects[key] = int(project.id)
        return int(project.id)

    def _check_config(self, project: Any, request: LabelRequest) -> None:
        cfg = project.label_config or ""
        if request.task == "classification":
            missing = [c for c in range(request.num_classes) if f'value="{c}"' not in cfg]
            ok = f'name="{CONTROL}"' in cfg and "<Choices" in cfg and not missing
        else:
            ok = f'name="{CONTROL}"' in cfg and "<Number" in cfg
        if not ok:
            raise ValueError(
                f"Label Studio project {project.id} ({project.title!r}) at {self.url} does not have the labeling "
                f"interface this oracle reads (a {'Choices' if request.task == 'classification' else 'Number'} "
                f"control named {CONTROL!r}{' with choices 0..' + str(request.num_classes - 1) if request.task == 'classification' else ''}); "
                f"use its labeling config:\n{label_config(request.task, request.num_classes)}"
            )

    def tasks(self, project: int, request: LabelRequest) -> dict[int, Any]:
        """This query's tasks in the project, by sample id."""
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{QUERY_FIELD}", "operator": "equal", "type": "String", "value": request.key},
        ]}}
        ls = self._ls()
        found = self._call("list tasks", lambda: list(ls.tasks.list(project=project, query=json.dumps(query), fields="all")))
        return {int(t.data["sample_id"]): t for t in found if t.data.get(QUERY_FIELD) == request.key}

    # --------------------------------------------------------------- oracle
    def _task(self, request: LabelRequest, sid: int) -> dict[str, Any]:
        hint = request.hints.get(sid, {})
        data: dict[str, Any] = {
            QUERY_FIELD: request.key, "sample_id": sid, "run": request.run_name, "partition": request.partition_id,
            "query": request.token, "cycle": request.cycle, "priority": hint.get("priority", 0.0),
        }
        if request.image is not None:
            data["image"] = "data:image/png;base64," + base64.b64encode(request.image(sid)).decode("ascii")
            to_name = "image"
        else:
            data["features"] = request.features(sid) if request.features is not None else {}
            to_name = "features"
        task: dict[str, Any] = {"data": data}
        if "prediction" in hint:
            if request.task == "classification":
                value, kind = {"choices": [str(int(hint["prediction"]))]}, "choices"
            else:
                value, kind = {"number": float(hint["prediction"])}, "number"
            task["predictions"] = [{
                "result": [{"from_name": CONTROL, "to_name": to_name, "type": kind, "value": value}],
                "score": float(hint.get("confidence", 0.0)),
                "model_version": f"{request.run_name} cycle {request.cycle} global model",
            }]
        return task

    def submit(self, request: LabelRequest) -> None:
        project = self.project(request)
        existing = self.tasks(project, request)
        missing = [sid for sid in request.ids if sid not in existing]
        if missing:
            self._call("import tasks", self._ls().projects.import_tasks, id=project,
                       request=[self._task(request, sid) for sid in missing], return_task_ids=True)

    def collect(self, request: LabelRequest) -> list[Answer]:
        project = self.project(request)
        tasks = self.tasks(project, request)
        if any(sid not in tasks for sid in request.ids):  # deleted in the tool, or never created: create again
            self.submit(request)
        answers = []
        for sid in request.ids:
            task = tasks.get(sid)
            done = [a for a in (task.annotations or []) if isinstance(a, dict)] if task is not None else []
            if not done:
                continue
            latest = max(done, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id", 0)))
            by = str(latest.get("created_username") or "").strip().split(",")[0].strip() or f"user {latest.get('completed_by')}"
            at = str(latest.get("updated_at") or latest.get("created_at") or "")
            if latest.get("was_cancelled"):
                answers.append(Answer(sid, None, True, "skipped", by, at))
                continue
            values = [r.get("value", {}) for r in latest.get("result") or [] if r.get("from_name") == CONTROL]
            value = None
            if values:
                v = values[0]
                value = (v.get("choices") or [None])[0] if "choices" in v else v.get("number")
            if value == UNCLEAR:
                answers.append(Answer(sid, None, True, "unclear", by, at))
            else:
                answers.append(Answer(sid, value, False, "", by, at))
        return answers
