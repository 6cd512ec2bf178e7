# Sourced by probe scripts: copy_prepared SRC DST makes DST a run holding only SRC's prepared
# data (and its stage record, so `dermae run` skips prepare), unless DST exists already.
copy_prepared() {
  if [ ! -d "$2" ]; then
    mkdir -p "$2/stages"
    cp -r "$1/data" "$2/"
    cp "$1/stages/prepare.json" "$2/stages/"
  fi
}
