"""aeraki_ctl: the control plane (MetaRouter -> proxy configuration over xDS). See issue 6."""

from __future__ import annotations
