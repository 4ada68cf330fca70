"""petl: the unified view of parameter-efficient transfer learning (He et al., ICLR 2022)."""
