"""Training LLaVA: ``python -m llava.train.train`` / ``deepspeed llava/train/train_mem.py`` (see ``train.py``).

Modules, each with one job:

* ``args``: the command-line dataclasses (upstream's names and defaults, plus ``--token-reduction``).
* ``preprocess``: one conversation -> ``input_ids`` / ``labels`` for a conversation template.
* ``data``: the JSON dataset, image loading and the batch collator.
* ``data_check``: the pass over the data before the model loads (bad images, ``<image>`` mismatches, answers
  cut off at ``--model_max_length``; ``--bad_samples``).
* ``sampler``: the modality-grouped length sampler.
* ``param_gather``: ZeRO-3 aware copies of (LoRA, projector, ...) parameters.
* ``model_setup``: building the model and tokenizer for a run (quantisation, LoRA, freezing, vision modules).
* ``saving``: what a run writes (LoRA adapter + non_lora_trainables, mm_projector.bin, full checkpoints).
* ``checkpoints``: when a ``checkpoint-N`` is complete, which one a run resumes from, the atomic rename.
* ``restore``: putting a checkpoint's LLaVA weights back when a run resumes.
* ``llava_trainer``: ``LLaVATrainer``, the ``transformers.Trainer`` subclass tying them together.
* ``upstream_api``: upstream ``train.py``'s helpers (``preprocess(sources, tokenizer, has_image)``, ``preprocess_v1``,
  ``safe_save_model_for_hf_trainer``, ``rank0_print``, ...) with upstream's signatures, re-exported by ``train``.

Nothing here is imported by the inference code; importing this package has no side effects.
"""
