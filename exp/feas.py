import sys, json
from targets.feasibility import best_feasible_fps
h, w = int(sys.argv[1]), int(sys.argv[2]); width = float(sys.argv[3]); part = sys.argv[4]; method = sys.argv[5]
r = best_feasible_fps({"name": "resnet8", "in_size": (h, w), "width": width}, part, method=method)
d = r.to_dict(); layers = d.pop("layers")
print(json.dumps(d)); print(sorted(layers, key=lambda x: -x[1])[:3])
