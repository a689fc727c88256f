"""One module per ``lorasp`` command (``lora_spec/cli.py`` is the entry point: it imports a command's module only
when that command runs, so ``lorasp --help`` stays fast).

Each command only parses its flags into the config of its stage (``TeachConfig`` in teach.py, ``FitConfig`` in
fit.py, ``EvalConfig`` in evaluate.py, ``MergeConfig`` in adapters/merge.py, ``GenerateConfig`` in
adapters/swap.py, ``CombineConfig`` in adapters/combine.py), calls the stage and prints the result object the stage
returns. This module holds what the commands share.
"""
