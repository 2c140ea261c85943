"""``yolodet quantize``: calibrate a model's int8 activation ranges once on a folder of images and write an int8
file (a yolodet checkpoint that also holds the calibration) for ``detect`` / ``val`` ``--precision int8`` (or
``--half`` on CPUs without native bf16) to reuse.

    yolodet quantize --cfg yolov3-tiny.cfg --weights yolov3-tiny.weights --calibrate images/ -o tiny.int8.pt
    yolodet detect photo.jpg --weights tiny.int8.pt --precision int8
"""

from __future__ import annotations

import argparse

HELP = "calibrate int8 inference on a folder of images and write an int8 model file"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from yolodet.cli.options import add_img_size_option, add_model_options
    from yolodet.inference.preprocess import PREPROCESS_MODES

    p.epilog = "Exit codes: 0 written; 2 bad cfg/weights/arguments or calibration folder."
    add_model_options(p)
    p.add_argument("--calibrate", required=True, metavar="DIR",
                   help="folder of calibration images (a few dozen from the deployment's own domain)")
    p.add_argument("-o", "--output", required=True, help="the int8 file to write (.pt)")
    add_img_size_option(p)
    p.add_argument("--preprocess", choices=PREPROCESS_MODES,
                   help="preprocessing of the calibration images (default: the cfg's, as detect uses)")


def run(args: argparse.Namespace) -> int:
    from yolodet.cli.options import img_size, model_files
    from yolodet.inference.calibrate import calibrate, save_int8
    from yolodet.inference.detector import default_preprocess
    from yolodet.inference.frozen import fold_batchnorm
    from yolodet.inference.settings import parse_size
    from yolodet.modeling.checkpoint import load_model

    cfg, weights = model_files(args.cfg, args.weights)
    model = load_model(cfg, weights).eval()
    size = parse_size(img_size(args.img_size), model)
    mode = args.preprocess or default_preprocess(model)
    cal = calibrate(fold_batchnorm(model), args.calibrate, img_size=size, preprocess_mode=mode)
    save_int8(model, cal, args.output)
    print(f"wrote {args.output} (int8 calibration on {cal.images} images of {cal.source}, {size[0]}x{size[1]} "
          f"{mode})")
    return 0
