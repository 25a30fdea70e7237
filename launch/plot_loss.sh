#!/usr/bin/env bash
# plot_loss.sh - draws the training curves of an aesim metrics CSV as a PNG.
#
# Usage: launch/plot_loss.sh METRICS_CSV OUT_PNG [WIDTHxHEIGHT]
#   METRICS_CSV  the file aesim-train writes (columns
#                step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds,
#                allreduce_ms,comm_ms,overlap; files of older versions lack the
#                last three; see include/train/metrics.h)
#   OUT_PNG      the image to write (replaced atomically: temp name, then mv)
#   WIDTHxHEIGHT image size in pixels, default 1000x600
# Draws train loss (the step rows: mean over each row's steps) and val loss
# (the epoch rows) against step on a log y axis, val PSNR (dB) on a second y
# axis, and a dashed vertical line labelled "epoch N" at each epoch end (an
# epoch row: val_loss filled at a whole epoch; the validation row of a run
# stopped mid-epoch is drawn as a point only).  The title gives the steps and epochs the CSV
# covers.  Empty fields (values not measured at that step), non-positive
# losses (no logarithm) and infinite PSNR are left out.
# PLOT_LOSS_SCRIPT=FILE also saves the gnuplot script there (to restyle the
# plot, and for the tests).
#
# Needs gnuplot (Debian: apt-get install gnuplot-nox); uses the pngcairo
# terminal when gnuplot has it, else png.  Set GNUPLOT to use another binary.
# Does not: read anything but the CSV, talk to MPI, or modify the CSV.
set -euo pipefail

HEADER="step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds,allreduce_ms,comm_ms,overlap"
HEADER_V1="step,epoch,train_loss,val_loss,val_psnr_db,images_per_s,seconds"
DEFAULT_SIZE=1000x600
GNUPLOT=${GNUPLOT:-gnuplot}

die() { echo "plot_loss.sh: error: $*" >&2; exit 1; }

if [ $# -lt 2 ] || [ $# -gt 3 ]; then
    echo "usage: $0 METRICS_CSV OUT_PNG [WIDTHxHEIGHT]" >&2
    exit 2
fi
csv=$1
out=$2
size=${3:-$DEFAULT_SIZE}
[[ $size =~ ^([1-9][0-9]*)x([1-9][0-9]*)$ ]] || die "size '$size' is not WIDTHxHEIGHT (e.g. $DEFAULT_SIZE)"
width=${BASH_REMATCH[1]}
height=${BASH_REMATCH[2]}

command -v "$GNUPLOT" >/dev/null 2>&1 ||
    die "gnuplot not found ('$GNUPLOT'); install it with: apt-get install gnuplot-nox"
[ -f "$csv" ] || die "$csv: no such file (is the path right? aesim-train writes metrics.csv in its output folder)"
[ -r "$csv" ] || die "$csv: not readable (check its permissions)"
first=$(head -n 1 "$csv")
[ "$first" = "$HEADER" ] || [ "$first" = "$HEADER_V1" ] ||
    die "$csv: header is '$first', expected '$HEADER' (not an aesim metrics file?)"
rows=$(tail -n +2 "$csv" | grep -c . || true)
[ "$rows" -gt 0 ] || die "$csv: no rows yet (the run has not logged a step; try again later)"
outdir=$(dirname -- "$out")
[ -d "$outdir" ] && [ -w "$outdir" ] || die "$out: folder '$outdir' does not exist or is not writable"

work=$(mktemp -d "${TMPDIR:-/tmp}/aesim_plot.XXXXXX")
tmp_out="$out.tmp.$$"
trap 'rm -rf "$work"; rm -f "$tmp_out"' EXIT

# Split the CSV into plain "x y" files, keeping only numeric fields
# (empty = not measured); losses must be > 0 for the log axis.
num='^[-+]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][-+]?[0-9]+)?$'
awk -F, -v re="$num" 'NR > 1 && $1 ~ re && $3 ~ re && $3 + 0 > 0 && $4 == "" { print $1, $3 }' "$csv" >"$work/train.dat"
# Epoch ends: "step epoch" of the rows with a validation loss at a whole
# epoch (a run stopped mid-epoch by --max-steps or a signal also writes a
# validation row, at a fractional epoch: its point is drawn, not a line).
awk -F, -v re="$num" 'NR > 1 && $1 ~ re && $2 ~ re && $4 ~ re && $2 + 0 > 0 && ($2 - int($2 + 0.5)) ^ 2 < 1e-12 { print $1, int($2 + 0.5) }' "$csv" >"$work/epochs.dat"
# What the CSV covers: the last step and epoch.
span=$(awk -F, -v re="$num" 'NR > 1 && $1 ~ re && $2 ~ re { s = $1; e = $2 } END { printf "%d steps, %.3g epoch(s)", s, e }' "$csv")
awk -F, -v re="$num" 'NR > 1 && $1 ~ re && $4 ~ re && $4 + 0 > 0 { print $1, $4 }' "$csv" >"$work/val.dat"
awk -F, -v re="$num" 'NR > 1 && $1 ~ re && $5 ~ re { print $1, $5 }' "$csv" >"$work/psnr.dat"

plots=()
[ -s "$work/train.dat" ] && plots+=("'$work/train.dat' using 1:2 axes x1y1 with lines lw 1.5 lc rgb '#1f77b4' title 'train loss'")
[ -s "$work/val.dat" ] && plots+=("'$work/val.dat' using 1:2 axes x1y1 with linespoints lw 1.5 pt 7 ps 0.6 lc rgb '#ff7f0e' title 'val loss'")
[ -s "$work/psnr.dat" ] && plots+=("'$work/psnr.dat' using 1:2 axes x1y2 with linespoints lw 1.5 pt 5 ps 0.6 lc rgb '#2ca02c' title 'val PSNR (dB)'")
[ ${#plots[@]} -gt 0 ] || die "$csv: $rows rows but no plottable values (all losses empty or <= 0)"

if "$GNUPLOT" -e 'set terminal pngcairo' >/dev/null 2>&1; then
    term="pngcairo size $width,$height enhanced font 'sans,10'"
else
    term="png size $width,$height"
fi
{
    echo "set terminal $term"
    echo "set output '$work/plot.png'"
    echo "set title 'aesim training: $span' noenhanced"
    echo "set xlabel 'step'"
    echo "set ylabel 'loss (MSE)'"
    echo "set logscale y"
    echo "set format y '%g'"
    echo "set ytics nomirror"
    echo "set grid xtics ytics"
    echo "set key outside top center horizontal"
    while read -r step epoch; do
        echo "set arrow from $step, graph 0 to $step, graph 1 nohead dashtype 2 lc rgb '#7f7f7f'"
        echo "set label 'epoch $(awk -v e="$epoch" 'BEGIN { printf "%g", e }')' at $step, graph 0.98 right offset -0.5, 0 font ',8' textcolor rgb '#7f7f7f' noenhanced"
    done <"$work/epochs.dat"
    if [ -s "$work/psnr.dat" ]; then
        echo "set y2label 'val PSNR (dB)'"
        echo "set y2tics"
    fi
    ( IFS=,; echo "plot ${plots[*]}" )
} >"$work/plot.gp"

"$GNUPLOT" "$work/plot.gp" 2>"$work/gnuplot.err" ||
    die "gnuplot failed: $(tr '\n' ' ' <"$work/gnuplot.err")"
if [ -n "${PLOT_LOSS_SCRIPT:-}" ]; then cp -- "$work/plot.gp" "$PLOT_LOSS_SCRIPT" || die "cannot write $PLOT_LOSS_SCRIPT"; fi
[ -s "$work/plot.png" ] || die "gnuplot wrote no image (messages: $(tr '\n' ' ' <"$work/gnuplot.err"))"
cp -- "$work/plot.png" "$tmp_out" || die "$out: cannot write the temporary file $tmp_out"
mv -f -- "$tmp_out" "$out" || die "$out: cannot rename $tmp_out into place"
echo "plot_loss.sh: wrote $out (${width}x${height}; $span)"
