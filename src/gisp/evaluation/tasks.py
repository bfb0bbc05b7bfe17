"""The evaluation tasks behind ``gisp eval``: one options dataclass, one entry point per model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import nn

from gisp.errors import GispError, check_positive

TASKS = ("ppl", "answer_ppl", "mc", "gsm8k", "speed")
#: The metric each task is summarised (tabled, plotted, compared) by, and whether higher is better.
PRIMARY = {"ppl": ("ppl", False), "answer_ppl": ("ppl", False), "mc": ("acc", True),
           "gsm8k": ("exact_match", True), "speed": ("decode_tokens_per_s", True)}


@dataclass
class EvalOptions:
    task: str = "ppl"
    data: str | None = None
    seq_len: int = 128
    batch_size: int = 8
    limit: int | None = None
    shots: int = 8
    prompt_format: str = "fewshot"
    records: str | None = None
    max_new_tokens: int = 256
    prompt_field: str = "prompt"
    answer_field: str = "answer"
    speed_batch: int = 1
    new_tokens: int = 32
    repeats: int = 5
    warmup: int = 1
    dtype: str = "float32"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise GispError(f"unknown task {self.task!r}; available: {', '.join(TASKS)}")
        if self.task != "speed" and not self.data:
            raise GispError(f"task {self.task} needs --data")
        if self.limit is not None and self.limit < 1:
            raise GispError(f"--limit must be positive, got {self.limit}")
        check_positive(self, ("batch_size", "max_new_tokens", "speed_batch", "new_tokens", "repeats"), flag="--")
        if self.seq_len < 2:
            raise GispError(f"--seq-len must be at least 2 (one predicted token), got {self.seq_len}")
        if self.shots < 0:
            raise GispError(f"--shots must be >= 0, got {self.shots}")
        if self.task == "gsm8k" and self.prompt_format == "fewshot":
            from gisp.evaluation.gsm8k import check_shots

            check_shots(self.shots)  # before any model loads
        if self.warmup < 0:
            raise GispError(f"warmup must be >= 0, got {self.warmup}")
        if self.prompt_format not in ("fewshot", "chat"):
            raise GispError(f"unknown prompt format {self.prompt_format!r}; choose from fewshot, chat")


def _limited(items: list, limit: int | None) -> list:
    return items if limit is None else items[:limit]


def evaluate_model(model: nn.Module, tokenizer, opts: EvalOptions) -> dict:
    """Run a non-speed task on a loaded model; returns the metrics as a flat dict."""
    from gisp.evaluation.choice import answer_perplexity, multiple_choice
    from gisp.evaluation.gsm8k import gsm8k_exact_match
    from gisp.evaluation.perplexity import perplexity
    from gisp.examples import answer_examples, choice_examples, gsm8k_problems

    if opts.task == "ppl":
        result = perplexity(model, tokenizer, opts.data, opts.seq_len, batch_size=opts.batch_size,
                            limit_windows=opts.limit, progress=opts.progress)
    elif opts.task == "answer_ppl":
        examples = _limited(answer_examples(opts.data, opts.prompt_field, opts.answer_field), opts.limit)
        result = answer_perplexity(model, tokenizer, examples, batch_size=opts.batch_size, progress=opts.progress)
    elif opts.task == "mc":
        result = multiple_choice(model, tokenizer, _limited(choice_examples(opts.data), opts.limit),
                                 batch_size=opts.batch_size, progress=opts.progress, records=opts.records)
    elif opts.task == "gsm8k":
        result = gsm8k_exact_match(model, tokenizer, _limited(gsm8k_problems(opts.data), opts.limit), shots=opts.shots,
                                   max_new_tokens=opts.max_new_tokens, batch_size=opts.batch_size, progress=opts.progress,
                                   prompt_format=opts.prompt_format, records=opts.records)
    else:
        raise GispError("the speed task measures a model by name in a child process; use evaluate_spec")
    return asdict(result)


def evaluate_spec(spec: str, opts: EvalOptions) -> dict:
    """Load ``spec`` (model id, directory, GGUF, alias) and run the task on it."""
    from gisp import models

    if opts.task == "speed":
        from gisp.evaluation.speed import measure_in_subprocess

        return asdict(measure_in_subprocess(spec, batch=opts.speed_batch, seq_len=opts.seq_len, new_tokens=opts.new_tokens,
                                            repeats=opts.repeats, warmup=opts.warmup, dtype=opts.dtype, device=opts.device))
    check_context(models.load_config(spec), opts)  # before the weights load
    model, tokenizer = models.load(spec, opts.dtype, opts.device)
    return evaluate_model(model, tokenizer, opts)


def check_context(config, opts: EvalOptions) -> None:
    """Refuse a perplexity window longer than the model's context, from its config alone (as
    ``prune`` refuses its ``--seq-len``): it would run for minutes, then give nonsense."""
    from gisp.adapters import adapter_for

    try:
        context = adapter_for(config, pruned_ok=True).context_length()
    except GispError:  # a family gisp cannot prune still evaluates; its context is not known here
        return
    if opts.task == "ppl" and context is not None and opts.seq_len > context:
        raise GispError(f"seq-len {opts.seq_len} is longer than the model's context of {context} tokens; lower --seq-len")


def summary_line(task: str, result: dict) -> str:
    """One human line per result."""
    if task == "ppl":
        return f"perplexity {result['ppl']:.4f} at seq_len {result['seq_len']} ({result['windows']} windows, {result['tokens']} predicted tokens)"
    if task == "answer_ppl":
        return f"answer perplexity {result['ppl']:.4f} over {result['tokens']} answer tokens of {result['examples']} examples"
    if task == "mc":
        return (f"acc {result['acc']:.4f} +- {result['acc_stderr']:.4f}  acc_norm {result['acc_norm']:.4f} +- "
                f"{result['acc_norm_stderr']:.4f}  acc_bytes {result['acc_bytes']:.4f}  ({result['questions']} questions)")
    if task == "gsm8k":
        how = f"{result['shots']}-shot" if result["prompt_format"] == "fewshot" else "chat, zero-shot"
        return (f"exact match {result['exact_match']:.4f} +- {result['stderr']:.4f} ({result['correct']}/{result['problems']}, "
                f"{how})")
    return (f"prefill {result['prefill_tokens_per_s']:.1f} tok/s ({result['batch']}x{result['seq_len']}), "
            f"decode {result['decode_tokens_per_s']:.1f} tok/s ({result['new_tokens']} new), "
            f"peak memory {result['peak_memory_mb']:.0f} MB, {result['parameters']:,} parameters on {result['device']}")
