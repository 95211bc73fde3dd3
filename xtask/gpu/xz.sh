# Sourced by the device scripts. xz through Python's lzma: the machine's image has python3 but may
# lack the xz tool.
# unxz_to FILE < FILE.xz
unxz_to() {
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)' > "$1"
}
