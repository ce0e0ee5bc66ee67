# ruff: noqa: E501  -- the exercise texts below are notebook markdown, kept line for line
"""Replace the "## Exercises" section of each course notebook with its text below: the same
exercises, each naming the `kd_lib.exercises` check to call, and a link to its solution notebook.

Only the markdown cell holding "## Exercises" changes, and in it only the text from that heading to
the end of the cell (the summary above it is kept); every other cell and all outputs stay
byte-identical, and the file is written back as Jupyter does (indent 1, UTF-8, final newline).
Idempotent: a notebook already updated is left alone. A notebook whose exercise section is neither
the text this script was written against nor the new text is skipped with a warning (pass --force
to replace it anyway).

    python scripts/update_exercises.py [--check] [--force] [NN ...]

--check: change nothing; exit 1 if some notebook still needs the update.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
HEADING = "## Exercises"

# notebook number -> (sha256 of the exercise section this text replaces, the new section)
NEW_EXERCISES = {
    "01": (
        "d2c97ef3c515c51b40bc2e18a8779795ce852a5e0e250af9168950e5beb28b9b",
        r"""## Exercises

1. **Predict, then run.** Add the candidate "Bread is a rock band from the 1970s." (shares a word
   with the query, but not its meaning) and a second paraphrase. Before re-running section 4, predict
   where each lands at $T = 1$ and $T = 4$. Then check.
2. **A temperature for a target.** Write `temperature_for(logits, target)`, which finds by bisection
   the $T$ at which the top class's probability equals `target`, and use it to find where the
   paraphrase's probability drops to 0.5 for the teacher logits. Why is bisection guaranteed to work
   here? *(Hint: show that $p_{\text{top}}(T)$ is decreasing in $T$.)*
   Check: `check_temperature_for_target(temperature_for)`.
3. **Floating point.** Find the smallest logit $x$ for which `naive_softmax(torch.tensor([x, 0.0]), 1.0)`
   returns `nan`, in float32 and in float64. Explain why the max-shifted version can underflow but
   never overflow, and why `torch.log(softmax(z))` is worse than `torch.log_softmax(z)` for
   the tiny probabilities this notebook is about. Check: `check_softmax_overflow(x_float32, x_float64)`.
4. **Entropy derivative.** Prove $\frac{dH}{dT} = \mathrm{Var}_{p}(z)/T^3$, where
   $\mathrm{Var}_p(z) = \sum_i p_i z_i^2 - (\sum_i p_i z_i)^2$. *(Hint: write $\log p_i = z_i/T - \log Z$
   and differentiate with respect to $\beta = 1/T$ first.)* Check it against a finite difference of
   the entropy curve at $T = 2$, then write it as `entropy_derivative(z, T)`.
   Check: `check_entropy_derivative(entropy_derivative)`.
5. **The high-temperature limit.** Using the first-order expansion from section 3, show that the
   gradient of `kd_lib.losses.kd_loss` (which includes the $T^2$ factor) with respect to the student
   logits $z$ tends to $\frac{1}{C}\left[(z - \bar z) - (v - \bar v)\right]$ as $T \to \infty$, where
   $v$ are the teacher logits — i.e. distillation becomes matching mean-centred logits with a squared
   error. Verify it with autograd at $T = 100$ for random $z, v \in \mathbb{R}^{10}$ (batch size 1).
   Check your `limit_gradient(z, v)`: `check_high_temperature_gradient(limit_gradient)`.

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/01_solutions.ipynb).""",
    ),
    "02": (
        "9cf5d2b3b7ee4b36a12f03a96221f8b7b5ed1d05047f5de7322c141ad289c38d",
        r"""## Exercises

1. **Shift invariance.** Show numerically that `kd_loss` does not change when you add a different
   constant to each *row* of the teacher logits. Explain why, using the softmax. Does the same hold
   for a per-*class* constant (the same vector added to every row)?
   Check: `check_shift_invariance(per_row=..., per_class=...)`.
2. **Mode-covering vs mode-seeking.** Take a bimodal teacher $p_t = [0.45, 0.45, 0.05, 0.05]$ and
   two students: one that covers both modes, $[0.3, 0.3, 0.2, 0.2]$, and one that picks a single
   mode, $[0.85, 0.05, 0.05, 0.05]$. Predict which student the forward KL $\mathrm{KL}(p_t\|p_s)$
   prefers, and which the reverse KL $\mathrm{KL}(p_s\|p_t)$; then compute the four divergences
   (check: `check_kl_directions(fwd_cover, fwd_mode, rev_cover, rev_mode)`). Does the answer match
   the "mode-seeking" reputation of the reverse KL? What changes for a uniform student? Relate the
   answer to trap (b).
3. **Token-level KD with padding.** First write `my_kd_loss(student_logits, teacher_logits, T)` for
   $[B, C]$ logits (check: `check_kd_loss(my_kd_loss)`). Then, for logits of shape $[B, L, C]$ and a
   padding mask $[B, L]$, write the per-token KD loss (mean over the unmasked positions) and check it
   against `kd_loss(..., mask=mask)` and with `check_token_kd_loss(my_token_kd_loss)`. Then make the padded positions' logits huge and confirm the loss does
   not change.
4. **The next term of the expansion.** Section 3 showed that $T\times$(relative error) of the
   logit-matching approximation tends to a constant. Derive the $O(1/T)$ correction and compare it
   with the table. (Hint: $\mathrm{KL}$ between two softmaxes is the Bregman divergence of
   $\log\sum_k e^{\theta_k}$; expand it to third order in $1/T$.)
5. **Effective alpha.** Train a small student (e.g. a linear model on synthetic Gaussian clusters
   with a fixed MLP teacher) with `distillation_loss` and with a version that uses
   `KLDivLoss(reduction="mean")` for the soft term, at the same `alpha`. Find the `alpha'` for
   which the buggy version behaves like the correct one at `alpha`, and derive it from trap (a).
   Check your formula as a function: `check_effective_alpha(effective_alpha)`.

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/02_solutions.ipynb).""",
    ),
    "03": (
        "17b13b3a1fa99be7348db50e0db32ac0639271fa1668b99ef199d1c3eec6cefd",
        r"""## Exercises

1. **Labels vs gain.** Re-run section 6 with `FEW_PER_CLASS` = 3, 5, 20 and 50. Plot the mean
   KD − CE gain against the number of labelled images. Where does it vanish?
2. **Student size and training length.** Reproduce the trials quoted in section 5: students
   `(64, 8, 10)` and `(64, 10)` (logistic regression), and `FULL_EPOCHS` = 3 and 5. Then try
   them with 100 labels (section 6) too. Can a different $T$ or $\alpha$ rescue KD for
   logistic regression? Look at the seed-to-seed spread, too.
3. **Unlabelled transfer set.** Keep only 100 labels, but use the teacher's logits on *all*
   1347 training images with $\alpha = 1$ (the labels then have zero weight: pass
   `torch.zeros_like(y_train)` as `y` to be sure; check that your mixed loss really ignores the labels
   at $\alpha = 1$ with `check_distillation_loss(my_loss)`). How close to the teacher does the student get? What does this say about what the
   teacher's logits contain?
4. **A weaker teacher.** Train the teacher for 1–2 epochs, or on only the 100 labelled images,
   and distil from it. When does the student beat its teacher? When does KD hurt compared with
   CE? (Hint: compare the teacher's accuracy with the CE student's.)
5. **Honest model selection.** The sweep picked $(T, \alpha)$ on the test set. Split a
   validation set off the training images (e.g. `sklearn.model_selection.train_test_split` with
   `stratify=`; check: `check_validation_split(y_train, fit_rows, val_rows)`), choose $(T, \alpha)$ on it, and report the test accuracy of that single choice. How much lower is it
   than the "best of sweep" number?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/03_solutions.ipynb).""",
    ),
    "04": (
        "d8099f961dd193582c294afc74d22b3c4d159fd3ab51f8f22d51621130de3135",
        r"""## Exercises

1. **Predict, then run.** Write down how you think the tokenizer splits "unfilmable",
   "Tarantino-esque" and "the 2nd sequel 🎬" (pieces, `##`, `[UNK]`, case). Then check with
   `tokenizer.tokenize` and with `my_tokenize`, or with `check_tokenize_prediction(text, pieces)`.
2. **Length bucketing.** Write `pad_share(lengths, batch_size)` (check: `check_pad_share(pad_share)`).
   Sort the training subset by length, cut it into batches of 32, and
   count the pad share as in section 1. Sorted batches are not random, which training needs; a
   common compromise shuffles, then sorts within chunks of, say, 50 batches, then shuffles the
   batches. Measure its pad share. How much of the gap between dynamic padding and perfect
   packing does it close?
3. **bert-base by formula.** With your formula, count bert-base-uncased ($V = 30522$, $P = 512$,
   $S = 2$, $H = 768$, $L = 12$, $F = 3072$): the total (about 109.5M with the pooler, without a head),
   the embeddings' share, and the parameters of a 6-layer DistilBERT made from it (without
   pre-classifier and head). Check: `check_bert_param_formula(bert_params)` for your formula as a
   function of $(V, P, S, H, L, F)$, and `check_bert_base_counts(total, share, distilbert_6)`. Compare the
   saving with our 3-layer student's. Why does the same "half the layers" save more here?
4. **Warm-up matters.** Fine-tune a teacher with `replace(recipe, warmup_ratio=0.0, lr=3e-4)` and
   with `replace(recipe, lr=3e-4)` (each is its own cache entry — explain why from the key), and
   compare validation accuracies. Then plot the training loss per step by running
   `train_epoch` yourself with a loss function that records `loss.item()`.
5. **Calibrate the teacher.** A teacher's confidence is only dark knowledge if it is *calibrated*.
   Bin the validation sentences by the teacher's $p_{\max}$ at $T = 1$ and compare each bin's mean
   confidence with its accuracy (a reliability diagram). Then find the $T$ that minimises the
   validation negative log-likelihood (temperature scaling, Guo et al., 2017; check your
   `fit_temperature(logits, labels)` with `check_temperature_scaling(fit_temperature)`). Is the best
   calibration temperature a good distillation temperature? Argue both ways.

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/04_solutions.ipynb).""",
    ),
    "05": (
        "44ed31a9a449ba41cd8bf1030122d61b6d6fe8d446febf5456c9dfa234b14958",
        r"""## Exercises

1. **Which layers?** Distil a student from teacher layers $[0, 2, 5]$ (DistilBERT-style: keep
   the last layer) and from $[0, 1, 2]$ (the bottom half), with the same settings as section 4,
   and compare with $[0, 2, 4]$. (Wang et al., 2023, "How to Distill your BERT", found the lower
   layers often the better start for task-specific distillation.)
2. **How big a transfer set?** With 100 labels, vary `N_TRANSFER` over 250, 500, 1000, 2000 (the
   pool grows with it). Plot accuracy against the transfer-set size. Where does it level off, and
   how close does it get to the teacher? Then start both students from the *pretrained*
   all-MiniLM-L6-v2 instead of the fine-tuned teacher (`distilbert_from_bert(load_teacher()[0])`
   with `kd_lib.models.load_teacher`), so that no task knowledge hides in the initialisation: how
   many more steps do they need, and how large is the gain now?
3. **The cosine loss.** Train the section 4 KD student with `kd_online(teacher, 2.0, 0.5,
   cosine_weight=1.0)` instead of the cached logits. Does the accuracy change beyond the seed
   noise? How much longer does an epoch take, and why?
4. **Sentence pairs.** Build a two-sentence input (`tokenizer(first, second)` sets
   `token_type_ids = 1` on the second sentence) and compare the hidden states of the teacher and
   the full-depth student of section 2. Where does the difference start (check: `check_pair_difference_layer(index)`), and why is the fold
   $P' = P + S[0]$ not enough? (Write the fold yourself; check: `check_fold_token_types(fold)`.) How could a DistilBERT student be taught to handle pairs?
5. **A head that matches.** Give the student BERT's $\tanh$ head (for example a small
   `nn.Module` wrapper that computes `classifier(tanh(pre_classifier(h_cls)))`), check that the
   full-depth student then reproduces the teacher's logits, and find out whether a 3-layer student
   with this head distils better or faster than with DistilBERT's ReLU head.

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/05_solutions.ipynb).""",
    ),
    "06": (
        "62ee9a91adc1aaf650eeae3abb1fd7016b6c06c4c55c9d89ebc41396301967ca",
        r"""## Exercises

1. **Predict, then check.** With `INCLUDE_EMBEDDINGS = True` and the uniform map, how many
   projections does `FeatureDistillLoss` create for the narrow student, and how many parameters
   do they hold? Check with `len(loss_fn.projections)` and `count_params(loss_fn)`, or with
   `check_projection_count(n_projections, n_params)`.
2. **Implement** the cosine variant of the hidden-state loss inline (masked mean of
   $1 - \cos$) and check it against `hidden_state_loss(..., kind="cosine")` on the batch of
   section 3, and with `check_cosine_hidden_loss(my_loss)`. Why does it not need the projection to get the *scale* of the teacher's states right?
3. **Change the map.** Write `my_layer_map(n_student, n_teacher, strategy)` returning the teacher's
   `hidden_states` index for each student layer (check: `check_layer_map(my_layer_map)`). Rerun
   section 6 with `LAYERS = "last"` (teacher layers 4, 5, 6). Which
   recipes change, and why does the "+ attention" recipe react more than "+ hidden states"?
4. **Weights.** Rerun section 6 with `FEATURE_WEIGHT = 1.0` and with `0.01`. What happens to
   accuracy and to each logged term? Which weight makes the feature terms a regulariser and
   which makes them the main objective?
5. **Harder: two stages.** Implement TinyBERT's schedule: `fit` with `weights={"hidden": 1,
   "attention": 1}` for a few epochs, then `fit` again with `{"logits": 1}`. Reproduce the
   collapse to the majority class described in section 6, find its cause (look at the logged
   terms and at the student's predictions after stage 1), and find a schedule that avoids it.

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/06_solutions.ipynb).""",
    ),
    "07": (
        "76c738a476f4eb39d261e5f98df728d3f29d64266d3afd16977975305d851c00",
        r"""## Exercises

1. **Temperature scaling.** Split the validation sentences in two halves. On the first, find
   the single temperature $T$ that minimises the cross-entropy of `softmax(logits / T)` (a grid
   over 0.5–3 is enough), then compare the ECE on the *second* half before and after dividing by
   $T$ (check your pieces: `check_temperature_scaling(fit_temperature)`, `check_ece(my_ece)`). Does the accuracy change? Why not? Is the student's best $T$ the teacher's?
2. **Which layers are sensitive?** Quantize the student with `skip=` one kind of layer at a time
   (all `q_lin`, all `ffn.lin2`, …; build the names with `linear_layers(student)`) and measure
   accuracy and agreement. Which layers cost the most accuracy when quantized, and what do you
   pay in speed for keeping them in float32?
3. **Prune, then heal.** Prune the teacher at 70 % with `torch.nn.utils.prune.global_unstructured`
   *without* `prune.remove` (so that the mask stays during training), then train it for one
   epoch on the training sentences with `fit` and `ce_loss()` (or distil it from its own unpruned
   logits with `kd_from_cache`). How much of the lost accuracy comes back?
4. **Sparse storage.** Store the Linear weights of the 70 %-pruned teacher as CSR tensors
   (`w.to_sparse_csr()`) and count their bytes (values, column indices and row pointers). From
   which sparsity does CSR beat the dense float32 matrix? (Check: `check_csr_bytes(csr_bytes)` and
   `check_csr_break_even(sparsity)`.) Time `torch.sparse.mm` against the dense
   product at 70 % and 95 % sparsity on this CPU.
5. **Pruning that speeds up.** Remove whole attention heads instead of single weights
   (`teacher.prune_heads({layer: [heads]})` in transformers), for example the heads whose output
   weights have the smallest norm, and measure accuracy and latency with `measure_speed`. Why does
   this *structured* pruning make a dense CPU kernel faster when unstructured pruning did not?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/07_solutions.ipynb).""",
    ),
    "08": (
        "4a1a9935141cd954a2d9b360fed2a0a5e533e01baa83ad700661c6f93afd7f4e",
        r"""## Exercises

1. **Which layers?** Build the deep student from layers $[0, 2, 5]$ (keep the last, DistilBERT-style)
   and from $[3, 4, 5]$ (the top half), train each the same way, and compare nDCG@10, overlap@10 and
   Spearman with $[0, 2, 4]$. Which matters more for a sentence encoder, the bottom layers or the top?
2. **More sentences, or more epochs?** Double `N_TRAIN_AG` for the narrow student, then instead keep it
   and set `EPOCHS = 2`. Which buys more overlap@10 per minute of training? Where does it level off?
3. **MSE or cosine?** Train both students with `EmbeddingDistillLoss(..., kind="cosine")`. On unit
   vectors the two losses differ only by the factor $2/D$ — so what, exactly, changes with AdamW
   (hint: AdamW's step size barely depends on the scale of the gradient)? Check your prediction.
4. **A smaller index.** The narrow student's projection $W s + b$ maps 256 numbers into a
   257-dimensional subspace of $\mathbb{R}^{384}$. Show that storing $R\,[s; 1]$, where
   $[W \; b] = QR$ is a thin QR decomposition, gives *exactly* the same cosines with 257 numbers per
   document instead of 384 (check: `check_qr_index(compress)`).
   Then try binary quantisation (`quantize_embeddings(..., "ubinary")`,
   48 bytes per document) with float32 rescoring of the top 100.
5. **Harder: a static student.** Set `NARROW_LAYERS = 0`: the student is then exactly the static
   model it starts as. Train it (its word embeddings must now be trainable) and compare its
   throughput and nDCG@10 with the 3-layer narrow student. How much of the search quality needs
   context at all?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/08_solutions.ipynb).""",
    ),
    "09": (
        "acde459d5523c986611d777954d79fd1e9fdaf4443f9898f3f8ea28c5dd1d249",
        r"""## Exercises

1. **Temperature and α.** Rerun section 6 with `TEMPERATURE = 2.0`, then with `ALPHA = 1.0`
   (no hard labels at all) at $T = 1$. Explain the first result from what the student is trained
   to match and what perplexity measures; explain why the second barely differs from
   `ALPHA = 0.5` (the trial gave 115.0 and 115.6).
2. **Where padding hides.** Write `next_token_labels(input_ids, attention_mask)`, the pre-shifted
   targets with -100 where there is nothing to predict (check: `check_next_token_labels(...)`). Make a
   batch of two blocks, one of them short, and compute the KD loss
   with `KLDivLoss(batchmean)` on `[B·L, V]` *without* masking. Change the padding token's id
   and see the loss move although no real token changed. Why can the teacher's and student's
   outputs at padded positions be arbitrary? Fix it with a mask (check:
   `check_token_kd_loss(my_token_kd_loss)`).
3. **Longer training.** Give both students all 244 chapters (`STUDENT_CHAPTERS = None`) and then
   two epochs. Does the relative gain of KD grow or shrink as the student trains longer and the
   hard labels alone become more informative? How close does the student get to the teacher?
4. **Sequence-level KD.** Let the teacher write 2,000 blocks of 128 tokens with `sample_text`
   (prompts: the first words of training paragraphs), train a student on them with
   `token_ce_loss`, and compare its held-out perplexity with the token-level KD student at equal
   steps. Then train on the union of the real text and the teacher's text.
5. **Top-k cached logits.** Precompute the teacher's 32 largest logits (values and token ids)
   at every position of the students' training blocks, store them (how many MB?), and write a loss
   that distils from them — renormalising the teacher's distribution over its top 32, or putting
   the remaining mass on the other tokens. How much faster is a step than with `kd_online`, and
   how much of the perplexity gain survives?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/09_solutions.ipynb).""",
    ),
    "10": (
        "adab7699093896afdb9dd2d425df99dd08f95790774008633c05fcaba37822ec",
        r"""## Exercises

1. **When does the mixture flip?** For the three teachers of section 1, find the temperature at
   which the mixture's decision changes from class 1 to class 0 (bisect on $T$; check:
   `check_mixture_flip_temperature(T)`). Prove that the
   product's decision cannot change with $T$. Then give teacher A logits $[80, 0]$: what happens
   to each average?
2. **Which target teaches best?** Distil a global student from the product
   (`ensemble_logits(public_stack, TEMPERATURE, mode="logits")`), one from the
   confidence-weighted mixture, and one from the best client alone. Compare them with the two
   students of section 5, with the paired intervals. Which differences leave the noise?
3. **How much skew?** Rerun part 1 with `DIRICHLET_ALPHA = None` (IID) and `0.1`. Plot the
   best client, the ensemble, the global student and the pooled model against $\alpha$. Where
   does ensemble distillation recover most of the pooled model, and where does it not?
4. **Equal depth instead of equal size.** Train two 4-layer single-task students (the same
   shared table, twice the transformer parameters of the two-head student) and a 2-layer
   two-head student. What does sharing a body cost when each task gets the same depth? Measure
   the speed of each.
5. **Unequal tasks.** Give the two-head student 4× more AG News than SST-2 sentences (sampling
   batches in proportion), then try weighting the SST-2 batches' loss 4×, or sampling the tasks
   equally. Does SST-2 suffer from sharing its body with a larger task, and which fix works?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/10_solutions.ipynb).""",
    ),
    "11": (
        "189c1752838d3065146c2c3d4bba2ad0dc8a74c29a9d761d89561e93a610a8f8",
        r"""## Exercises

1. Set `BATCH_SIZE` to 8 and `EPOCHS` to 1 and re-run section 1: does the Trainer still match the loop? Then turn
   dropout back on (skip `student_without_dropout`'s loop) and measure how far apart the two students end up —
   compare with two loop runs with different `SEED`s.
2. Run the main job with `--grad-accum 4` and then `--grad-accum 1` (same `--batch-size`): compare the
   `train_losses` in their `state.json`. Why are they equal, and what would change if you passed `--batch-size 8`
   with `--grad-accum 4` instead? Write the accumulation yourself, `accumulate(model, loss_fn, inputs,
   targets, k)`, and check it: `check_grad_accumulation(accumulate)`.
3. Start `python -m kd_lib distill --preset fast --checkpoint-every 5 --output-dir runs/crash`, press Ctrl-C during
   the KD student, and run it again with `--resume`. Compare `results.json` with an uninterrupted run.
4. Use `training_memory_gb` to find the largest batch of 512-token sequences that fits in 24 GB when fine-tuning
   bert-base; how does it change for bert-large (24 layers, width 1024, 16 heads, 335 M parameters)?
   Check: `check_largest_batch(bert_base, bert_large)`.
5. On a machine with GPUs: run `scripts/gpu_check.py`, compute the MFU it implies from the student's throughput,
   and redo section 4's table with it. At what dataset size do eight GPUs save more time than they cost to start?

Check your answers with `kd_lib.exercises` (`from kd_lib.exercises import check_…`): each
check answers ✓ or ✗ with a hint about the likely mistake. Worked solutions:
[solutions](solutions/11_solutions.ipynb).""",
    ),
}


def _lines(text: str) -> list[str]:
    """A cell source as Jupyter stores it: lines with their newlines, the last without."""
    return text.splitlines(keepends=True)


def _exercise_cell(cells: list[dict]) -> dict:
    found = [c for c in cells if c["cell_type"] == "markdown" and HEADING in "".join(c["source"])]
    if len(found) != 1:
        raise SystemExit(f"expected one markdown cell with {HEADING!r}, found {len(found)}")
    return found[0]


def update(path: Path, force: bool = False, check: bool = False) -> str:
    """Update one notebook; returns "updated", "up to date", "needs update" or "skipped"."""
    expected_old, new = NEW_EXERCISES[path.name[:2]]
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    if json.dumps(nb, indent=1, ensure_ascii=False) + "\n" != raw:
        print(f"warning: {path.name} is not in Jupyter's format (indent 1); it will be rewritten in it", file=sys.stderr)
    cell = _exercise_cell(nb["cells"])
    source = "".join(cell["source"])
    head, section = source[: source.index(HEADING)], source[source.index(HEADING) :]
    if section == new:
        return "up to date"
    if hashlib.sha256(section.encode()).hexdigest() != expected_old and not force:
        print(f"warning: {path.name}: its exercise section changed since this script was written; "
              "skipped (review the text here, then pass --force)", file=sys.stderr)
        return "skipped"
    if check:
        return "needs update"
    cell["source"] = _lines(head + new)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return "updated"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("numbers", nargs="*", help="notebook numbers, e.g. 01 07 (default: all)")
    parser.add_argument("--force", action="store_true", help="replace sections that changed since")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if an update is due")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of the course notebooks")
    args = parser.parse_args(argv)
    numbers = args.numbers or sorted(NEW_EXERCISES)
    pending = False
    for nn in numbers:
        matches = sorted(args.notebooks.glob(f"{nn}_*.ipynb"))
        if nn not in NEW_EXERCISES or len(matches) != 1:
            raise SystemExit(f"no single course notebook {nn}_*.ipynb with exercise text here")
        status = update(matches[0], force=args.force, check=args.check)
        pending |= status in ("needs update", "skipped")
        print(f"{matches[0].name}: {status}")
    return 1 if args.check and pending else 0


if __name__ == "__main__":
    sys.exit(main())
