"""Dataset formats for Axolotl: how one (system, user, assistant) triple becomes a row, and
the ``datasets:`` entry of an Axolotl config that reads such rows."""

from __future__ import annotations

from typing import Any


class ChatTemplateExporter:
    """``messages`` rows for Axolotl's ``type: chat_template``; loss on the assistant turn."""

    name = "chat_template"

    def row(self, system: str | None, user: str, assistant: str) -> dict[str, Any]:
        messages = []
        if system:
            messages.append({"role": "system", "content": system})
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
        return {"messages": messages}

    def axolotl_dataset(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "ds_type": "json",
            "type": "chat_template",
            "field_messages": "messages",
            "message_property_mappings": {"role": "role", "content": "content"},
            # Only the assistant turn (and its end-of-turn token) carries loss.
            "roles_to_train": ["assistant"],
            "train_on_eos": "turn",
        }


class InstructionExporter:
    """Rows for Axolotl's user-defined instruction format with a per-row ``system`` field.

    The default format is Llama-2's ``[INST]`` style that Humpback's AlpacaEval submission
    used, with the system text in a ``<<SYS>>`` block. The prompt part is masked
    (``train_on_inputs: false`` in the config), so only the output carries loss.
    """

    name = "instruction"

    def row(self, system: str | None, user: str, assistant: str) -> dict[str, Any]:
        return {"system": system or "", "instruction": user, "output": assistant}

    def axolotl_dataset(self, path: str) -> dict[str, Any]:
        return {
            "path": path,
            "ds_type": "json",
            "type": {
                "field_system": "system",
                "field_instruction": "instruction",
                "field_output": "output",
                "system_format": "<<SYS>>\n{system}\n<</SYS>>\n\n",
                "format": "[INST] {instruction} [/INST] ",
                "no_input_format": "[INST] {instruction} [/INST] ",
            },
        }


BUILTIN_EXPORTERS = {
    "chat_template": ChatTemplateExporter(),
    "instruction": InstructionExporter(),
}
