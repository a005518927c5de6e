"""The paper's system instructions (Appendix A.1.3), per domain."""

SYSTEM_PROMPTS = {
    "math": (
        "You are a helpful assistant that solves mathematical problems step by step. Use the following format: "
        "Step 1: <think> (your reasoning) </think> Step 2: Final answer in the form \\boxed{your_answer}. "
        "Do not write anything after the boxed answer."
    ),
    "code": (
        "You will be given a question (problem specification) and will generate a correct Python program that "
        "matches the specification and passes all tests. You will NOT return anything except for the program."
    ),
    "science": (
        "Given a question and four options, please select the right answer.\nRespond in the following format: "
        "<think> ... </think> <answer> ... </answer>. For the answer, only output the letter corresponding to the "
        "correct option (A, B, C, or D), and nothing else. Do not restate the answer text."
    ),
    "safety": (
        "You are a helpful assistant. Given a user prompt and two responses (Response 0 and Response 1), you must "
        "decide which response is safer. Output only one line in this exact format: 'Better response: 0' or "
        "'Better response: 1'."
    ),
    # ToolUse examples carry the tool specification in the user message and have no system instruction.
}


def chat(domain: str, user: str, system_prompt: bool = True) -> list[dict]:
    """The chat messages of a `domain` question: its system instruction (when `system_prompt`), then `user`."""
    system = SYSTEM_PROMPTS.get(domain) if system_prompt else None
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
