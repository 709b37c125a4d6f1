#!/bin/sh
# Checks the repository's Vagrantfile without a provider or a box: `vagrant validate`
# (Ruby syntax and Vagrant configuration), then `bash -n` on its provisioning script.
# Needs Debian's vagrant package (tools/vmtest/deps.sh vagrant installs it).
set -eu
cd "$(dirname "$0")/../.."
command -v vagrant >/dev/null || { echo "check-vagrantfile: vagrant not installed (tools/vmtest/deps.sh vagrant)" >&2; exit 1; }
script=$(mktemp)
dot=$(mktemp -d)
trap 'rm -rf "$script" "$dot"' EXIT
# No provider is installed here: validate the provider-independent configuration, keeping
# vagrant's .vagrant/ state directory out of the tree.
VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_DOTFILE_PATH=$dot vagrant validate --ignore-provider
ruby -e 'src = File.read("Vagrantfile")
m = src.match(/^PROVISION = <<~.SHELL.\n(.*?)^SHELL$/m) or abort("check-vagrantfile: no PROVISION script in Vagrantfile")
print m[1]' >"$script"
bash -n "$script"
echo "Vagrantfile: provisioning script parses ($(wc -l <"$script") lines)"
