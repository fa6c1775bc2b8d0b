#!/usr/bin/env bash
# Debian packages the test suite needs: the real AWS S3 Encryption Clients used as interop
# oracles (Ruby aws-sdk-s3, Go aws-sdk-go v1) and their toolchains, a JDK whose JCE lays out Java
# v1 objects (tests/interop/java), and buildah and debootstrap, which build and run the image
# (scripts/build-image.sh, tests/image). Installs only what is missing.
set -euo pipefail
packages=(ruby ruby-aws-sdk-s3 ruby-aws-sdk-kms golang-go golang-github-aws-aws-sdk-go-dev openjdk-17-jdk-headless buildah debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
