#!/bin/sh
# Runs inside the VM, started by /init with the host's share at /mnt/host
# (written there per run by hil/vm/boot.py: env, site/ with hwflow, hil/).
# Its exit status becomes the VM's: 0 only when every check passed.
set -u
. /mnt/host/env
export PYTHONPATH=/mnt/host/site:/mnt/host
echo "guest: kernel $(uname -r), $(nproc) CPUs, python $(python3 -c 'import sys; print(sys.version.split()[0])')"
for module in cls_flower act_mirred act_gact act_vlan act_pedit act_csum act_tunnel_key act_ct sch_ingress \
              openvswitch veth vxlan 8021q; do
    modprobe "$module" || echo "guest: modprobe $module failed"
done
cd /tmp || exit 125
python3 -m hil.checks --only "$HIL_ONLY" --results /mnt/host/results.json
