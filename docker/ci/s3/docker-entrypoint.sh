#!/bin/sh
# Entrypoint of the MinIO stand-in. minio/minio runs `minio "$@"`; here `[minio] server DIR [FLAGS]`
# (the minio service's command) starts the moto-based S3 server, and anything else is run as given,
# e.g. `mc ...` (the minio-create-bucket service replaces this entrypoint with /bin/sh -c anyway).
set -e
if [ "$1" = minio ]; then
    shift
fi
if [ "$1" = server ]; then
    shift
    exec python3 /usr/local/lib/s3-standin/s3server.py "$@"
fi
exec "$@"
