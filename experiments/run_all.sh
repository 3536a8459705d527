#!/usr/bin/env bash
# Rerun every experiment of experiments/README.md from scratch: the data reports, every run (a
# finished run folder of the same config and seed is replaced by a fresh one), the showcase lists,
# the K-means elbow, then the tables and figures. Prints the wall time of each step.
#
#   ANIMEREC_DATA=/path/to/shared/data bash experiments/run_all.sh          # everything
#   ANIMEREC_DATA=... bash experiments/run_all.sh leaderboard study_protocol  # only these steps
#
# Step names: eda runs tune peak showcase elbow report, or one experiment name (a config in experiments/configs).
# A finished tuning search is reused (keras-tuner resumes it; no trial is repeated) and refitted.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANIMEREC_DATA="${ANIMEREC_DATA:-$(cd .. && pwd)/shared/data}"
PY="${PYTHON:-python3}"
CFG=experiments/configs
RUNS=(leaderboard cooperunion_5k kmeans_elbow dnn_curves study_protocol study_protocol_score0 tuned_vs_peers
      rating_defaults rating_defaults_5k)
# the models and peers searched with one budget per data set, then run tuned against tuned
# (ranking_peak*, rating_peak*). On the 5k set the Keras ranker searched is Mult-VAE with RecVAE's
# pieces (tune_recvae_5k); tune_multvae_5k and tune_two_tower_5k are not in the default steps (a
# trial is 15-80 min on 2 cores: run them by name), nor is tune_autorec_5k (~1.5 h: 1.3-7.6 min a trial).
RANKERS=(ease multvae item_knn implicit_als implicit_bpr)
RANKERS_5K=(ease recvae item_knn implicit_als implicit_bpr)
RATERS=(svdpp autorec embedding_dot dnn surprise_svd surprise_svdpp surprise_knnbaseline)
RATERS_5K=(svdpp embedding_dot dnn surprise_svd surprise_svdpp surprise_knnbaseline)
TUNES=(tune_kmeans tune_two_tower tune_recommendernet tune_recommendernet_study)
for m in "${RANKERS[@]}" "${RATERS[@]}"; do TUNES+=("tune_$m"); done
for m in "${RANKERS_5K[@]}" "${RATERS_5K[@]}"; do TUNES+=("tune_${m}_5k"); done

step() {  # step NAME COMMAND...: run it, print its wall time
  local name="$1"; shift
  local t0; t0=$(date +%s)
  echo "==> $name: $*" >&2
  "$@"
  echo "<== $name: $(( $(date +%s) - t0 )) s" >&2
}

wanted() {  # is step $1 selected on the command line (no arguments = all)?
  [[ $# -gt 0 ]] || return 1
  local s="$1"; shift
  [[ ${#SELECTED[@]} -eq 0 ]] && return 0
  for x in "${SELECTED[@]}"; do [[ "$x" == "$s" ]] && return 0; done
  return 1
}
SELECTED=("$@")
T0=$(date +%s)

if wanted eda; then
  step "eda mal2020_sample" "$PY" -m research eda "$CFG/mal2020_sample.toml"
  step "eda animelist" "$PY" -m research eda "$CFG/eda_animelist.toml"
fi
for exp in "${RUNS[@]}"; do
  if wanted runs || wanted "$exp"; then
    step "run $exp" "$PY" -m research run -q "$CFG/$exp.toml"
  fi
done
for exp in "${TUNES[@]}"; do
  if wanted tune || wanted "$exp"; then
    step "tune $exp" "$PY" -m research tune "$CFG/$exp.toml"
  fi
done
# tuned against tuned: every ranking model and peer at its searched configuration and at its
# default, fitted on train + validation, 3 seeds (the config is written from the finished searches)
if wanted peak || wanted ranking_peak; then
  step "write ranking_peak.toml" "$PY" experiments/tuned_config.py --out "$CFG/ranking_peak.toml" \
    --experiment ranking_peak --skip-default multvae $(for m in "${RANKERS[@]}"; do echo "$CFG/tune_$m.toml"; done)
  step "run ranking_peak" "$PY" -m research run -q "$CFG/ranking_peak.toml"
fi
if wanted peak || wanted ranking_peak_5k; then
  step "write ranking_peak_5k.toml" "$PY" experiments/tuned_config.py --out "$CFG/ranking_peak_5k.toml" \
    --experiment ranking_peak_5k $(for m in "${RANKERS_5K[@]}"; do echo "$CFG/tune_${m}_5k.toml"; done)
  step "run ranking_peak_5k" "$PY" -m research run -q "$CFG/ranking_peak_5k.toml"
fi
# the rating models: the same, plus blend_tuned (the blend over our tuned rating models)
if wanted peak || wanted rating_peak; then
  step "write rating_peak.toml" "$PY" experiments/tuned_config.py --out "$CFG/rating_peak.toml" \
    --experiment rating_peak --blend $(for m in "${RATERS[@]}"; do echo "$CFG/tune_$m.toml"; done)
  step "run rating_peak" "$PY" -m research run -q "$CFG/rating_peak.toml"
fi
if wanted peak || wanted rating_peak_5k; then
  step "write rating_peak_5k.toml" "$PY" experiments/tuned_config.py --out "$CFG/rating_peak_5k.toml" \
    --experiment rating_peak_5k --blend $(for m in "${RATERS_5K[@]}"; do echo "$CFG/tune_${m}_5k.toml"; done)
  step "run rating_peak_5k" "$PY" -m research run -q "$CFG/rating_peak_5k.toml"
fi
if wanted elbow || wanted kmeans_elbow; then
  step "kmeans elbow curve" "$PY" experiments/kmeans_elbow.py "$CFG/kmeans_elbow.toml"
fi
# the showcase configs are the leaderboard's config under another name: showcase.py reuses the
# leaderboard's fresh seed-0 run instead of fitting the same models again
if wanted showcase || wanted similar_anime; then
  step "similar anime lists" "$PY" experiments/showcase.py similar-anime "$CFG/similar_anime.toml" --anime 1 5114 9253
fi
if wanted showcase || wanted similar_users; then
  step "similar users lists" "$PY" experiments/showcase.py similar-users "$CFG/similar_users.toml" --pick-seed 0
fi
if wanted showcase || wanted recommend_random_user; then
  step "recommendation lists" "$PY" experiments/showcase.py recommend "$CFG/recommend_random_user.toml" --pick-seed 0
fi
if wanted report || [[ ${#SELECTED[@]} -eq 0 ]]; then
  step "report" "$PY" -m research report
fi
echo "all done in $(( $(date +%s) - T0 )) s" >&2
