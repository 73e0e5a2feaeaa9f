#!/usr/bin/env bash
# The research experiments behind docs/results.md, one CLI command each. Long: the first sections alone took
# about 10 core-hours on a 2-core CPU machine with the default (vacancy-readout) expert, the whole script many
# times that; run two at a time. Every command writes a run folder under OUT_DIR (never into the source tree)
# with its resolved config, per-fold tables, metrics.json, held-out predictions and PNGs. The script ends by
# summarising them into OUT_DIR/summaries (`adex report RUN... --write-summaries`): experiments.csv, folds.csv, experiments.json,
# heldout_predictions.csv.gz and the few files of the benchmark scripts. Those are what
# benchmarks/results/experiments/ holds; docs/results.md and the README's table are made from them by
#   adex report --from-summaries benchmarks/results/experiments --template docs/results.md -o docs/results.md
#
#   ADEX_DATA=../shared/data bash benchmarks/experiments.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: experiments.sh OUT_DIR}
mkdir -p "$OUT"
ADVISORS=builtin::bandgap:1,builtin::eform:1
COMMON=(--threads 1 --no-register)
runs() { for d in "$OUT"/*/; do [ -f "$d/metrics.json" ] && echo "$d"; done; return 0; }  # the run folders so far

# Descriptor baseline, the same folds; and with CHGNet's embeddings of the vacated site and host
adex baseline --cv published --out "$OUT/baseline_published"
adex baseline --cv published_struct --out "$OUT/baseline_published_struct"
adex baseline --cv published@0.40 --out "$OUT/baseline_published_0.40"
adex baseline --cv published@0.10 --out "$OUT/baseline_published_0.10"
adex baseline --cv published --advisors chgnet --out "$OUT/baseline_chgnet"
adex baseline --cv published_struct --advisors chgnet --out "$OUT/baseline_chgnet_struct"

# Learning curve (10 published folds per fraction; 1.00 = the 10-fold CV per vacancy)
adex experiment learning-curve --advisors $ADVISORS --fractions 1.00,0.40,0.10 --variants advised,scratch \
    --seeds 0 --folds 10 "${COMMON[@]}" --out "$OUT/lc"
# 10-fold CV per compound
adex experiment learning-curve --per-compound --advisors $ADVISORS --fractions 1.00 --variants advised,scratch \
    --seeds 0 --folds 10 "${COMMON[@]}" --out "$OUT/lc_struct"
# transfer from the eform advisor at 10 % data
adex experiment learning-curve --advisors $ADVISORS --fractions 0.10 --variants transfer,transfer-gradual,advised-transfer \
    --seeds 0 --folds 10 "${COMMON[@]}" --out "$OUT/lc_transfer"

# Foundation-model advisor (pip install adex[chgnet]; adex advisor import chgnet)
adex cv --advisors $ADVISORS,chgnet --cv published --folds 10 "${COMMON[@]}" --out "$OUT/chgnet"
adex cv --advisors $ADVISORS,chgnet --cv published_struct --folds 10 "${COMMON[@]}" --out "$OUT/chgnet_struct"
adex experiment learning-curve --advisors $ADVISORS,chgnet --fractions 0.10,0.40 --variants advised --seeds 0 --folds 10 \
    "${COMMON[@]}" --out "$OUT/lc_chgnet"
adex baseline --cv published@0.10 --advisors chgnet --out "$OUT/baseline_chgnet_0.10"
adex baseline --cv published@0.40 --advisors chgnet --out "$OUT/baseline_chgnet_0.40"
# ... with augmentation (each training vacancy also in a >= 10 A supercell)
adex cv --advisors $ADVISORS,chgnet --cv published --folds 10 --set 'augment.min_image_distances=[10.0]' \
    "${COMMON[@]}" --out "$OUT/chgnet_augment"

# Poolings: the expert's on three 10 % folds, the eform advisor's on 1,000 MP crystals
adex experiment pooling --advisors $ADVISORS --cv published@0.10 --folds 3 --seeds 0 --epochs 60 "${COMMON[@]}" \
    --out "$OUT/pool_expert"
adex experiment pooling --advisor eform --limit 1000 --epochs 15 --seeds 0 "${COMMON[@]}" --out "$OUT/pool_advisor"

# Augmentation: each training vacancy also in a >= 10 A supercell
adex cv --advisors $ADVISORS --cv published@0.40 --fold 0.40k0 --fold 0.40k1 --fold 0.40k2 \
    --set 'augment.min_image_distances=[10.0]' "${COMMON[@]}" --out "$OUT/augment"

# the shipped recipe (CHGNet-advised + augmentation) with seeds 1 and 2, and per compound; the per-compound
# folds run as two --fold subsets side by side and are merged into one CV
for seed in 1 2; do
    adex cv --advisors $ADVISORS,chgnet --cv published --folds 10 --set 'augment.min_image_distances=[10.0]' --seed $seed \
        "${COMMON[@]}" --out "$OUT/chgnet_augment_seed$seed"
done
adex cv --advisors $ADVISORS,chgnet --cv published_struct --fold=1.00k{0,1,2,3,4}_struct --set 'augment.min_image_distances=[10.0]' \
    "${COMMON[@]}" --out "$OUT/chgnet_augment_struct_a"
adex cv --advisors $ADVISORS,chgnet --cv published_struct --fold=1.00k{5,6,7,8,9}_struct --set 'augment.min_image_distances=[10.0]' \
    "${COMMON[@]}" --out "$OUT/chgnet_augment_struct_b"
adex experiment merge "$OUT/chgnet_augment_struct_a" "$OUT/chgnet_augment_struct_b" --out "$OUT/chgnet_augment_struct"
for frac in 0.40 0.10; do  # the shipped recipe at 40 % and 10 % training data, seeds 0 and 1
    for seed in 0 1; do
        name=chgnet_augment_$frac$([ $seed = 0 ] || echo _seed$seed)
        adex cv --advisors $ADVISORS,chgnet --cv published@$frac --fold=${frac}k{0,1,2,3,4} --set 'augment.min_image_distances=[10.0]' \
            --seed $seed "${COMMON[@]}" --out "$OUT/${name}_a"
        adex cv --advisors $ADVISORS,chgnet --cv published@$frac --fold=${frac}k{5,6,7,8,9} --set 'augment.min_image_distances=[10.0]' \
            --seed $seed "${COMMON[@]}" --out "$OUT/${name}_b"
        adex experiment merge "$OUT/${name}_a" "$OUT/${name}_b" --out "$OUT/$name"
    done
    adex experiment blend "$OUT/chgnet_augment_$frac" "$OUT/baseline_chgnet_$frac" --out "$OUT/blend_chgnet_augment_$frac"
    adex experiment blend "$OUT/chgnet_augment_$frac" "$OUT/chgnet_augment_${frac}_seed1" --out "$OUT/chgnet_augment_${frac}_2seeds"
    adex experiment blend "$OUT/chgnet_augment_${frac}_2seeds" "$OUT/baseline_chgnet_$frac" --out "$OUT/blend_chgnet_augment_${frac}_2seeds"
done

# Blends (fixed equal weights, never fitted on held-out folds): the 3 seeds = the shipped 3-member recipe's CV;
# expert + the descriptor baseline with CHGNet embeddings at every training size
adex experiment blend "$OUT/chgnet_augment" "$OUT/chgnet_augment_seed1" "$OUT/chgnet_augment_seed2" --out "$OUT/chgnet_augment_3seeds"
adex experiment blend "$OUT/chgnet_augment_3seeds" "$OUT/baseline_chgnet" --out "$OUT/blend_chgnet_augment_3seeds"
adex experiment blend "$OUT/chgnet_augment" "$OUT/baseline_chgnet" --out "$OUT/blend_chgnet_augment"
adex experiment blend "$OUT/chgnet_augment_struct" "$OUT/baseline_chgnet_struct" --out "$OUT/blend_chgnet_augment_struct"
adex experiment blend "$OUT/chgnet_struct" "$OUT/baseline_chgnet_struct" --out "$OUT/blend_chgnet_struct"
adex experiment blend "$OUT/lc_chgnet/0.40_advised_seed0" "$OUT/baseline_chgnet_0.40" --out "$OUT/blend_chgnet_0.40"
adex experiment blend "$OUT/lc_chgnet/0.10_advised_seed0" "$OUT/baseline_chgnet_0.10" --out "$OUT/blend_chgnet_0.10"

# a second seed at 10 %
adex experiment learning-curve --advisors $ADVISORS --fractions 0.10 --variants advised,scratch --seeds 1 --folds 10 \
    "${COMMON[@]}" --out "$OUT/lc_seed1"
adex experiment learning-curve --advisors $ADVISORS,chgnet --fractions 0.10 --variants advised --seeds 1 --folds 10 \
    "${COMMON[@]}" --out "$OUT/lc_chgnet_seed1"

adex experiment merge "$OUT/lc" "$OUT/lc_transfer" "$OUT/lc_seed1" --baseline "$OUT/baseline_published" \
    --baseline "$OUT/baseline_published_0.40" --baseline "$OUT/baseline_published_0.10" --out "$OUT/lc_all"

# Delta-learning on CHGNet (model.potential_delta): the expert and the baseline learn dH minus CHGNet's unrelaxed
# vacancy energy E(defected) - E(pristine) of the 8 A canonical supercell (cached under $ADEX_HOME/cache/potential;
# the first run computes them: ~0.3 s per vacancy and supercell size on one core)
for cv in published published_struct published@0.10 published@0.40; do
    adex baseline --cv $cv --advisors chgnet --potential-delta --out "$OUT/baseline_chgnet_delta$(echo $cv | sed 's/published//; s/@/_/')"
done
adex cv --advisors $ADVISORS,chgnet --cv published@0.10 --folds 10 --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/delta_0.10"
adex cv --advisors $ADVISORS,chgnet --cv published@0.40 --folds 10 --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/delta_0.40"
adex cv --advisors $ADVISORS,chgnet --cv published --folds 10 --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/delta"
adex cv --advisors $ADVISORS,chgnet --cv published_struct --folds 10 --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/delta_struct"

for frac in 0.10 0.40; do  # a second seed of the delta expert, as two --fold halves side by side, and the blends
    adex cv --advisors $ADVISORS,chgnet --cv published@$frac --fold=${frac}k{0,1,2,3,4} --set 'augment.min_image_distances=[10.0]' \
        --set model.potential_delta=true --seed 1 "${COMMON[@]}" --out "$OUT/delta_${frac}_seed1_a"
    adex cv --advisors $ADVISORS,chgnet --cv published@$frac --fold=${frac}k{5,6,7,8,9} --set 'augment.min_image_distances=[10.0]' \
        --set model.potential_delta=true --seed 1 "${COMMON[@]}" --out "$OUT/delta_${frac}_seed1_b"
    adex experiment merge "$OUT/delta_${frac}_seed1_a" "$OUT/delta_${frac}_seed1_b" --out "$OUT/delta_${frac}_seed1"
    adex experiment blend "$OUT/delta_$frac" "$OUT/delta_${frac}_seed1" --out "$OUT/delta_${frac}_2seeds"
    adex experiment blend "$OUT/delta_${frac}_2seeds" "$OUT/baseline_chgnet_delta_$frac" --out "$OUT/blend_delta_${frac}_2seeds"
    adex experiment blend "$OUT/delta_$frac" "$OUT/baseline_chgnet_delta_$frac" --out "$OUT/blend_delta_$frac"
done
adex experiment blend "$OUT/delta" "$OUT/baseline_chgnet_delta" --out "$OUT/blend_delta"
adex experiment blend "$OUT/delta_struct" "$OUT/baseline_chgnet_delta_struct" --out "$OUT/blend_delta_struct"

# ... with the defected supercell line-search relaxed on CHGNet's forces first (model.potential_relaxation; ~2 s per
# vacancy on one core, cached). The expert without augmentation (the 10 A views would need their own relaxations),
# each as two --fold halves side by side.
for cv in published published_struct published@0.10 published@0.40; do
    adex baseline --cv $cv --advisors chgnet --potential-delta --potential-relaxation \
        --out "$OUT/baseline_chgnet_relax$(echo $cv | sed 's/published//; s/@/_/')"
done
adex cv --advisors $ADVISORS,chgnet --cv published --fold=1.00k{0,1,2,3,4} --set model.potential_delta=true \
    --set model.potential_relaxation=true "${COMMON[@]}" --out "$OUT/relax_a"
adex cv --advisors $ADVISORS,chgnet --cv published --fold=1.00k{5,6,7,8,9} --set model.potential_delta=true \
    --set model.potential_relaxation=true "${COMMON[@]}" --out "$OUT/relax_b"
adex experiment merge "$OUT/relax_a" "$OUT/relax_b" --out "$OUT/relax"
adex experiment blend "$OUT/relax" "$OUT/baseline_chgnet_relax" --out "$OUT/blend_relax"
adex cv --advisors $ADVISORS,chgnet --cv published_struct --fold=1.00k{0,1,2,3,4}_struct --set model.potential_delta=true \
    --set model.potential_relaxation=true "${COMMON[@]}" --out "$OUT/relax_struct_a"
adex cv --advisors $ADVISORS,chgnet --cv published_struct --fold=1.00k{5,6,7,8,9}_struct --set model.potential_delta=true \
    --set model.potential_relaxation=true "${COMMON[@]}" --out "$OUT/relax_struct_b"
adex experiment merge "$OUT/relax_struct_a" "$OUT/relax_struct_b" --out "$OUT/relax_struct"
adex experiment blend "$OUT/delta" "$OUT/baseline_chgnet_relax" --out "$OUT/blend_delta_relaxbaseline"
adex experiment blend "$OUT/delta_struct" "$OUT/baseline_chgnet_relax_struct" --out "$OUT/blend_delta_relaxbaseline_struct"

# The descriptor baseline's features as a fourth advisor (adex advisor import descriptors: standardised on 200 MP
# crystals, 2.5 min), with delta-learning and augmentation as in "delta"; the descriptors of every Witman host
# (~30 ms per site, 199 hosts: ~2.5 min) are computed by the first fold and cached per host for the others.
adex advisor import descriptors --n-structures 200
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{0,1,2,3,4} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/descriptors_a"
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{5,6,7,8,9} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/descriptors_b"
adex experiment merge "$OUT/descriptors_a" "$OUT/descriptors_b" --out "$OUT/descriptors"
for family in published_struct published@0.10 published@0.40; do  # per compound, 10 % and 40 % of the data
    name=descriptors$(echo $family | sed 's/published//; s/@/_/')
    prefix=$(case $family in published_struct) echo 1.00k;; *) echo ${family#published@}k;; esac)
    suffix=$([ $family = published_struct ] && echo _struct)
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv $family --fold=${prefix}{0,1,2,3,4}${suffix} \
        --set 'augment.min_image_distances=[10.0]' --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/${name}_a"
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv $family --fold=${prefix}{5,6,7,8,9}${suffix} \
        --set 'augment.min_image_distances=[10.0]' --set model.potential_delta=true "${COMMON[@]}" --out "$OUT/${name}_b"
    adex experiment merge "$OUT/${name}_a" "$OUT/${name}_b" --out "$OUT/$name"
done
adex experiment blend "$OUT/descriptors" "$OUT/baseline_chgnet_delta" --out "$OUT/blend_descriptors"
# a second seed of the descriptor-advised expert per vacancy, and the mean of the two seeds
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{0,1,2,3,4} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true --seed 1 "${COMMON[@]}" --out "$OUT/descriptors_seed1_a"
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{5,6,7,8,9} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true --seed 1 "${COMMON[@]}" --out "$OUT/descriptors_seed1_b"
adex experiment merge "$OUT/descriptors_seed1_a" "$OUT/descriptors_seed1_b" --out "$OUT/descriptors_seed1"
adex experiment blend "$OUT/descriptors" "$OUT/descriptors_seed1" --out "$OUT/descriptors_2seeds"
# ... and a third seed: the 3-seed mean (as a 3-member ensemble predicts), alone and blended with the dE baseline
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{0,1,2,3,4} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true --seed 2 "${COMMON[@]}" --out "$OUT/descriptors_seed2_a"
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{5,6,7,8,9} --set 'augment.min_image_distances=[10.0]' \
    --set model.potential_delta=true --seed 2 "${COMMON[@]}" --out "$OUT/descriptors_seed2_b"
adex experiment merge "$OUT/descriptors_seed2_a" "$OUT/descriptors_seed2_b" --out "$OUT/descriptors_seed2"
adex experiment blend "$OUT/descriptors" "$OUT/descriptors_seed1" "$OUT/descriptors_seed2" --out "$OUT/descriptors_3seeds"
adex experiment blend "$OUT/descriptors_3seeds" "$OUT/baseline_chgnet_delta" --out "$OUT/blend_descriptors_3seeds"
# ... with an exponential moving average of the weights (training.ema_decay=0.999: validation, early stopping and the
# returned model use the average), seeds 0-4 per vacancy: the means of seeds 0-2 and 0-4 (3- and 5-member ensembles)
EMA=(--set 'augment.min_image_distances=[10.0]' --set model.potential_delta=true --set training.ema_decay=0.999)
for seed in 0 1 2 3 4; do
    name=descriptors_ema$([ $seed = 0 ] || echo _seed$seed)
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{0,1,2,3,4} "${EMA[@]}" --seed $seed \
        "${COMMON[@]}" --out "$OUT/${name}_a"
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv published --fold=1.00k{5,6,7,8,9} "${EMA[@]}" --seed $seed \
        "${COMMON[@]}" --out "$OUT/${name}_b"
    adex experiment merge "$OUT/${name}_a" "$OUT/${name}_b" --out "$OUT/$name"
done
adex experiment blend "$OUT/descriptors_ema" "$OUT/descriptors_ema_seed1" "$OUT/descriptors_ema_seed2" --out "$OUT/descriptors_ema_3seeds"
adex experiment blend "$OUT/descriptors_ema_3seeds" "$OUT/baseline_chgnet_delta" --out "$OUT/blend_descriptors_ema_3seeds"
adex experiment blend "$OUT"/descriptors_ema{,_seed1,_seed2,_seed3,_seed4} --out "$OUT/descriptors_ema_5seeds"
adex experiment blend "$OUT/descriptors_ema_5seeds" "$OUT/baseline_chgnet_delta" --out "$OUT/blend_descriptors_ema_5seeds"
# ... per compound with weight averaging (seed 0; an interrupted half continues with --resume), blended with the baselines
for half in a b; do
    folds=$([ $half = a ] && echo 1.00k{0,1,2,3,4}_struct || echo 1.00k{5,6,7,8,9}_struct)
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv published_struct $(printf -- "--fold=%s " $folds) "${EMA[@]}" \
        "${COMMON[@]}" --out "$OUT/descriptors_ema_struct_$half" --resume
done
adex experiment merge "$OUT/descriptors_ema_struct_a" "$OUT/descriptors_ema_struct_b" --out "$OUT/descriptors_ema_struct"
adex experiment blend "$OUT/descriptors_ema_struct" "$OUT/baseline_chgnet_relax_struct" --out "$OUT/blend_descriptors_ema_relax_struct"
adex experiment blend "$OUT/descriptors_ema_struct" "$OUT/baseline_chgnet_delta_struct" --out "$OUT/blend_descriptors_ema_delta_struct"
# ... and without a validation set (training.val_fraction=0: each fold trains on its whole training set and keeps the
# averaged weights of the epoch with the lowest training loss), per vacancy, at 10 % and per compound
NOVAL=("${EMA[@]}" --set training.val_fraction=0)
for family in published published@0.10 published_struct; do
    name=descriptors_ema_noval$(echo $family | sed 's/published//; s/@/_/')
    prefix=$(case $family in published@0.10) echo 0.10k;; *) echo 1.00k;; esac)
    suffix=$([ $family = published_struct ] && echo _struct)
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv $family --fold=${prefix}{0,1,2,3,4}${suffix} "${NOVAL[@]}" \
        "${COMMON[@]}" --out "$OUT/${name}_a"
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv $family --fold=${prefix}{5,6,7,8,9}${suffix} "${NOVAL[@]}" \
        "${COMMON[@]}" --out "$OUT/${name}_b"
    adex experiment merge "$OUT/${name}_a" "$OUT/${name}_b" --out "$OUT/$name"
done
adex experiment blend "$OUT/descriptors_ema_noval_struct" "$OUT/baseline_chgnet_relax_struct" --out "$OUT/blend_descriptors_ema_noval_relax_struct"
# ... per compound without a validation set, more seeds: the mean of seeds 0-2 (a 3-member ensemble) and of seeds 0-3,
# alone and blended
for seed in 1 2 3; do
    for half in a b; do
        folds=$([ $half = a ] && echo 1.00k{0,1,2,3,4}_struct || echo 1.00k{5,6,7,8,9}_struct)
        adex cv --advisors $ADVISORS,chgnet,descriptors --cv published_struct $(printf -- "--fold=%s " $folds) "${NOVAL[@]}" \
            --seed $seed "${COMMON[@]}" --out "$OUT/descriptors_ema_noval_struct_seed${seed}_$half" --resume
    done
    adex experiment merge "$OUT"/descriptors_ema_noval_struct_seed${seed}_{a,b} --out "$OUT/descriptors_ema_noval_struct_seed$seed"
done
adex experiment blend "$OUT"/descriptors_ema_noval_struct{,_seed1,_seed2} --out "$OUT/descriptors_ema_noval_struct_3seeds"
adex experiment blend "$OUT/descriptors_ema_noval_struct_3seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_ema_noval_struct_3seeds_relax"
adex experiment blend "$OUT"/descriptors_ema_noval_struct{,_seed1,_seed2,_seed3} --out "$OUT/descriptors_ema_noval_struct_4seeds"
adex experiment blend "$OUT/descriptors_ema_noval_struct_4seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_ema_noval_struct_4seeds_relax"
# ... per compound with the relaxed dE (model.potential_relaxation) and augmentation: the 10 A views share the relaxed
# dE of the configured supercell (augment.share_potential_energies) as they share the label
# (seeds 0-2; their mean, alone and blended with the relaxed-dE baseline)
RELAX=("${NOVAL[@]}" --set model.potential_relaxation=true --set augment.share_potential_energies=true)
for seed in 0 1 2 3; do
    name=descriptors_relaxshared_struct$([ $seed = 0 ] || echo _seed$seed)
    for half in a b; do
        folds=$([ $half = a ] && echo 1.00k{0,1,2,3,4}_struct || echo 1.00k{5,6,7,8,9}_struct)
        adex cv --advisors $ADVISORS,chgnet,descriptors --cv published_struct $(printf -- "--fold=%s " $folds) "${RELAX[@]}" \
            --seed $seed "${COMMON[@]}" --out "$OUT/${name}_$half" --resume
    done
    adex experiment merge "$OUT/${name}_a" "$OUT/${name}_b" --out "$OUT/$name"
done
adex experiment blend "$OUT/descriptors_relaxshared_struct" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_relaxshared_struct_relax"
adex experiment blend "$OUT"/descriptors_relaxshared_struct{,_seed1,_seed2} --out "$OUT/descriptors_relaxshared_struct_3seeds"
adex experiment blend "$OUT/descriptors_relaxshared_struct_3seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_relaxshared_struct_3seeds_relax"
# ... and the six per-compound members (unrelaxed and relaxed dE, seeds 0-2 each) averaged, alone and blended
adex experiment blend "$OUT"/descriptors_relaxshared_struct{,_seed1,_seed2} "$OUT"/descriptors_ema_noval_struct{,_seed1,_seed2} \
    --out "$OUT/descriptors_noval_relaxshared_struct_6seeds"
adex experiment blend "$OUT/descriptors_noval_relaxshared_struct_6seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_noval_relaxshared_struct_6seeds_relax"
# ... and with seed 3 of the unrelaxed recipe: seven members
adex experiment blend "$OUT"/descriptors_relaxshared_struct{,_seed1,_seed2} "$OUT"/descriptors_ema_noval_struct{,_seed1,_seed2,_seed3} \
    --out "$OUT/descriptors_noval_relaxshared_struct_7seeds"
adex experiment blend "$OUT/descriptors_noval_relaxshared_struct_7seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_noval_relaxshared_struct_7seeds_relax"
# ... and with seed 3 of the relaxed recipe too: eight members
adex experiment blend "$OUT"/descriptors_relaxshared_struct{,_seed1,_seed2,_seed3} --out "$OUT/descriptors_relaxshared_struct_4seeds"
adex experiment blend "$OUT"/descriptors_relaxshared_struct{,_seed1,_seed2,_seed3} "$OUT"/descriptors_ema_noval_struct{,_seed1,_seed2,_seed3} \
    --out "$OUT/descriptors_noval_relaxshared_struct_8seeds"
adex experiment blend "$OUT/descriptors_noval_relaxshared_struct_8seeds" "$OUT/baseline_chgnet_relax_struct" \
    --out "$OUT/blend_descriptors_noval_relaxshared_struct_8seeds_relax"
# ... at 10 % of the data (8 steps per epoch): weight averaging as above, and with training.ema_warmup=true
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published@0.10 "${EMA[@]}" "${COMMON[@]}" --out "$OUT/descriptors_ema_0.10"
adex cv --advisors $ADVISORS,chgnet,descriptors --cv published@0.10 "${EMA[@]}" --set training.ema_warmup=true "${COMMON[@]}" \
    --out "$OUT/descriptors_emawarm_0.10"
# where the per-compound error comes from: one offset per host (and the baseline with the true DFT host properties)
python "$(dirname "$0")/host_offsets.py" "$OUT"/{delta_struct,descriptors_struct,baseline_chgnet_delta_struct,baseline_chgnet_relax_struct,blend_delta_relaxbaseline_struct,delta,descriptors_3seeds,baseline_chgnet_delta} \
    --oracle-baseline "$OUT/baseline_oracle_host_struct" --out "$OUT/host_offsets.csv"
adex experiment blend "$OUT/descriptors_struct" "$OUT/baseline_chgnet_delta_struct" --out "$OUT/blend_descriptors_struct"
adex experiment blend "$OUT/descriptors_struct" "$OUT/baseline_chgnet_relax_struct" --out "$OUT/blend_descriptors_relaxbaseline_struct"

# A closer relaxation: 10 FIRE steps on CHGNet's forces instead of one line search (model.potential_relaxation_steps;
# 11 force evaluations per vacancy), the cache filled by two processes first; the baseline on every fold family
for part in 0 1; do
    python "$(dirname "$0")/potential_energies.py" --relaxation-steps 10 --part $part --of 2 \
        --out "$OUT/potential_energies_fire10_${part}of2.json" &
done
wait
for cv in published published_struct published@0.10 published@0.40; do
    adex baseline --cv $cv --advisors chgnet --potential-delta --potential-relaxation --relaxation-steps 10 \
        --out "$OUT/baseline_chgnet_fire10$(echo $cv | sed 's/published//; s/@/_/')"
done

adex report $(runs) -o "$OUT/report.md"  # the run folders so far, with figures (not host_offsets.csv, *.json)

# How steady is the per-compound baseline: seeds 0-4 of the relaxed-dE baseline and their mean (a bagged baseline);
# host weighting (n_host^-0.5 per training vacancy) for the baseline (seeds 0-4) and the expert (seed 0, no validation)
for p in 0 0.5; do
    for seed in 0 1 2 3 4; do
        adex baseline --cv published_struct --advisors chgnet --potential-delta --potential-relaxation --host-weight-power $p \
            --seed $seed --out "$OUT/baseline_chgnet_relax$([ $p = 0 ] || echo _hostw)_struct_seed$seed"
    done
    adex experiment blend "$OUT"/baseline_chgnet_relax$([ $p = 0 ] || echo _hostw)_struct_seed{0,1,2,3,4} \
        --out "$OUT/baseline_chgnet_relax$([ $p = 0 ] || echo _hostw)_struct_5seeds"
done
for half in a b; do
    folds=$([ $half = a ] && echo 1.00k{0,1,2,3,4}_struct || echo 1.00k{5,6,7,8,9}_struct)
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv published_struct $(printf -- "--fold=%s " $folds) "${NOVAL[@]}" \
        --set training.host_weight_power=0.5 "${COMMON[@]}" --out "$OUT/hostw_struct_$half" --resume
done
adex experiment merge "$OUT/hostw_struct_a" "$OUT/hostw_struct_b" --out "$OUT/hostw_struct"
for baseline in baseline_chgnet_relax_struct_5seeds baseline_chgnet_relax_hostw_struct_5seeds; do
    adex experiment blend "$OUT/descriptors_noval_relaxshared_struct_8seeds" "$OUT/$baseline" --out "$OUT/blend_8seeds_$baseline"
done
adex report $(runs) -o "$OUT/report.md"

# Experts with and without the CHGNet dE offset in one ensemble (per compound): the per-compound recipe above without
# model.potential_delta (seeds 0-3, a whole 10-fold run per seed on one core), alone, and as 4 more members of the
# eight-member dE ensemble (12 members, equal weight each: the 8-member mean weighs 2, the 4-member mean 1)
for seed in 0 1 2 3; do
    adex cv --advisors $ADVISORS,chgnet,descriptors --cv published_struct --set 'augment.min_image_distances=[10.0]' \
        --set training.ema_decay=0.999 --set training.val_fraction=0 --seed $seed "${COMMON[@]}" \
        --out "$OUT/nodelta_noval_struct$([ $seed = 0 ] || echo _seed$seed)" --resume
done
adex experiment blend "$OUT"/nodelta_noval_struct{,_seed1,_seed2,_seed3} --out "$OUT/nodelta_noval_struct_4seeds"
adex experiment blend "$OUT/descriptors_noval_relaxshared_struct_8seeds" "$OUT/nodelta_noval_struct_4seeds" --weights 2,1 \
    --out "$OUT/mixed_12members_struct"
adex report $(runs) -o "$OUT/report.md"
# The same mix from earlier runs: per vacancy the 5 dE members of the weight-averaging section + the 3 augmented
# CHGNet-advised members without dE (equal weight per member), and the recipes of the shipped vacancy:6 (3 seeds) and
# vacancy-delta (seed 0) half and half, per vacancy and per compound (the CV estimate of builtin::expert/vacancy-mixed,
# which is `adex expert ensemble builtin::expert/vacancy:6 builtin::expert/vacancy-delta:1 --name vacancy-mixed`)
adex experiment blend "$OUT/descriptors_ema_5seeds" "$OUT/chgnet_augment_3seeds" --weights 5,3 --out "$OUT/mixed_8members"
adex experiment blend "$OUT/chgnet_augment_3seeds" "$OUT/delta" --out "$OUT/mixed_shipped_recipes"
adex experiment blend "$OUT/chgnet_augment_struct" "$OUT/delta_struct" --out "$OUT/mixed_shipped_recipes_struct"

# CHGNet's relaxation energies against the DFT labels in the simplest delta model (dH = dE + one constant per
# vacated element; reads the cached unrelaxed, line-search and 10-FIRE-step energies filled above)
python "$(dirname "$0")/relaxation_energies.py" --relaxation-steps 10 --out "$OUT/relaxation_energies.json"

# The summaries of every run folder, and the other small result files, in one folder (the committed copy is
# benchmarks/results/experiments/); then the report of the run folders with their figures
adex report $(runs) --write-summaries "$OUT/summaries" -o "$OUT/report.md"
cp "$OUT"/host_offsets.csv "$OUT"/relaxation_energies.json "$OUT"/potential_energies_fire10_*.json "$OUT/summaries/"
