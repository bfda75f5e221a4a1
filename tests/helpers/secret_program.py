"""Agent programs that plant every secret of ``secret_corpus`` in every field that reaches the
database: ``python secret_program.py explicit|ag2``. Each prints ``flushed=<bool>`` last."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "examples"))

from secret_corpus import KEYS, ORDINARY, TEXTS

import agent_shim

PLANTED = [text for _, text in TEXTS.values()]


def explicit() -> bool:
    """The explicit API: one run per planted text, the text in every field of every record."""
    from agent_shim import records
    from agent_shim.context import Scope

    tracker = agent_shim.activate()
    for text in PLANTED:
        secret_payload = {text: text, "text": text, "list": [text, {"deeper": text}], **KEYS}
        # The run's session is named after its task.
        with tracker.run(text, note=text, **KEYS) as run, run.phase(text, note=text) as phase, \
                run.step(1, text, note=text) as step:
            tracker.event(text, subtype=text, agent_name=text, status="completed",
                          inputs=secret_payload, outputs=[text, secret_payload],
                          meta={"note": text, **KEYS}, error=text)
            with tracker.span("tool_call", subtype=text, agent_name=text,
                              inputs=secret_payload, meta={"note": text}):
                tracker.cost(model=text, agent_name=text, prompt_tokens=3,
                             completion_tokens=4, total_tokens=7, cost_usd=0.01)
            tracker.record(records.edge(Scope(run.id, run.session_id), phase.id, step.id,
                                       text, condition=text))
            run.skip(2, text, reason=text)
    tracker.open_session(name=PLANTED[0], meta={"note": PLANTED[0], **KEYS})
    with tracker.run("ordinary"):
        tracker.event("ordinary", agent_name="planner", inputs=ORDINARY, meta=ORDINARY)
        tracker.event("odd text", agent_name="nul\x00agent \ud83d", error="half \ud83d",
                      inputs={"nul": "a\x00b", "surrogate": "half \ud83d"})
    return tracker.flush(60)


def ag2() -> bool:
    """A real AG2 conversation with a scripted model: secrets in the model's key, the messages,
    the tool calls' arguments and their results."""
    from autogen import ConversableAgent, register_function
    from offline_llm import ScriptedAgent, call, llm_config

    from agent_shim.ag2 import install

    tracker = agent_shim.activate()
    install(tracker)

    def lookup(query: str) -> str:
        """Look something up."""
        return f"found {TEXTS['url'][1]} and {TEXTS['bearer'][1]} for {query}"

    def configure(settings: dict[str, str]) -> str:
        """Apply settings."""
        return f"applied {sorted(settings)}; {TEXTS['yaml'][1]}"

    assistant = ScriptedAgent("assistant", llm_config=llm_config(api_key=TEXTS["openai"][0]),
                              script=[
                                  [*(call("lookup", query=text) for text in PLANTED),
                                   call("configure", settings=KEYS)],
                                  f"Done: {TEXTS['jwt'][1]}; {TEXTS['pem'][1]} TERMINATE",
                              ])
    user = ConversableAgent("user", llm_config=False, human_input_mode="NEVER",
                            code_execution_config=False,
                            is_termination_msg=lambda m: "TERMINATE" in str(m.get("content")))
    for tool in (lookup, configure):
        register_function(tool, caller=assistant, executor=user, description=tool.__doc__ or "")
    user.initiate_chat(assistant, message="Connect: " + " | ".join(PLANTED), max_turns=2)
    return tracker.flush(60)


def main(name: str) -> None:
    programs: dict[str, Any] = {"explicit": explicit, "ag2": ag2}
    flushed = programs[name]()
    print(f"flushed={flushed}", flush=True)
    sys.exit(0 if flushed else 1)


if __name__ == "__main__":
    main(sys.argv[1])
