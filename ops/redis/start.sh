#!/bin/sh
# The compose Redis: ACL users from ops/redis/users.acl (one per worker role, stream/storage/acl.py),
# each password hash the SHA-256 of its Docker secret /run/secrets/redis_<role>; the default user off.
# Runs as root only to read the secrets, then hands over to the image's entrypoint (which drops to redis).
set -eu
TEMPLATE=${STREAMGATE_ACL_TEMPLATE:-/opt/streamgate/users.acl}
SECRETS=${STREAMGATE_SECRETS_DIR:-/run/secrets}
OUT=${STREAMGATE_ACL_FILE:-/data/users.acl}
umask 077
tmp="$OUT.new"
grep -v '^#' "$TEMPLATE" > "$tmp"
for role in gateway privatizer shredder reader; do
  secret="$SECRETS/redis_$role"
  placeholder="#@$(echo "$role" | tr '[:lower:]' '[:upper:]')@"
  if [ -s "$secret" ]; then
    hash=$(tr -d '\n' < "$secret" | sha256sum | cut -d' ' -f1)
    sed -i "s/$placeholder/#$hash/" "$tmp"
  else  # no secret, no user
    sed -i "/ $placeholder /d" "$tmp"
  fi
done
mv "$tmp" "$OUT"
[ "${STREAMGATE_ACL_ONLY:-}" = 1 ] && exit 0
exec docker-entrypoint.sh redis-server "$@" --aclfile "$OUT"
