"""Evaluation: did the loop work? M0, M1 and M2 measured the way the paper measures them.

* :mod:`.generate`: each model's answers to an instruction set (AlpacaEval's 805 or your
  own JSON/JSONL), written as AlpacaEval ``model_outputs.json``; the paper's decoding and
  the system texts of its tag ablation;
* :mod:`.compare`: pairwise preference between two outputs files, judged by any
  OpenAI-compatible model, each pair asked in both orders; win rate, tie rate and a
  bootstrap interval (:mod:`.stats`), the per-example verdicts kept;
* :mod:`.lm_eval`: multiple-choice accuracy through lm-evaluation-harness against the
  served model, tasks from local files;
* :mod:`.alpaca_eval`: the same outputs handed to the ``alpaca_eval`` package, with a
  client config that points at the local judge.
"""
