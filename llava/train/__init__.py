"""Training LLaVA: ``python -m llava.train.train`` / ``deepspeed llava/train/train_mem.py`` (see ``train.py``).

Modules, each with one job:

* ``args``: the command-line dataclasses (upstream's names and defaults, plus ``--token-reduction``).
* ``preprocess``: one conversation -> ``input_ids`` / ``labels`` for a conversation template.
* ``data``: the JSON dataset, image loading and the batch collator.
* ``sampler``: the modality-grouped length sampler.
* ``param_gather``: ZeRO-3 aware copies of (LoRA, projector, ...) parameters.
* ``model_setup``: building the model and tokenizer for a run (quantisation, LoRA, freezing, vision modules).
* ``saving``: what a run writes (LoRA adapter + non_lora_trainables, mm_projector.bin, full checkpoints).
* ``llava_trainer``: ``LLaVATrainer``, the ``transformers.Trainer`` subclass tying them together.

Nothing here is imported by the inference code; importing this package has no side effects.
"""
