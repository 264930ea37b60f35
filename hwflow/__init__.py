"""hwflow: a hardware-offload-aware local SDN controller for SmartNIC hosts."""

import warnings

__version__ = "0.1.0"

# python-ovs looks for eventlet (installed as an os-ken dependency) and makes
# eventlet print a deprecation banner on every command. hwflow runs on plain
# threads and never imports eventlet itself, so the banner says nothing useful.
warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
# The same import makes eventlet load dnspython, whose DNSSEC module trips the
# cryptography package's DSA deprecation twice over: nothing hwflow uses.
warnings.filterwarnings("ignore", message=r"DSA is deprecated", module=r"dns\.")
