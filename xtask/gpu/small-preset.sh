# Sourced by the device scripts that time the random ~1B preset: sets $bin (the packed CUDA build
# when .gpu/check is carried, else this checkout's release build) and $model (the preset, written
# once per machine under /tmp).
preset=llava-1b-shape
bin=target/release/twigvlm
if [ -f .gpu/check/twigvlm.xz ]; then
    bin=/tmp/twigvlm-check
    source "$(dirname "${BASH_SOURCE[0]}")/xz.sh"
    [ -x $bin ] || { unxz_to $bin < .gpu/check/twigvlm.xz; chmod +x $bin; }
fi
model=/tmp/check-$preset
[ -f $model/model.safetensors ] || "$bin" make-model --preset $preset --out $model > /dev/null
