"""The foundation coverage list, as data: one small model per timm family.

Each entry: (family, model name, input size (C, H, W), stages). ``test_*`` models are timm's own
tiny members of a family. Adding a family is adding a line.
"""

COVERAGE = [
    ("resnet", "test_resnet", (3, 64, 64), (2, 3)),
    ("resnetv2", "resnetv2_18", (3, 64, 64), (2, 3)),
    ("resnext", "resnext26ts", (3, 64, 64), (2, 3)),
    ("convnext", "test_convnext", (3, 64, 64), (1, 2)),
    ("efficientnet", "test_efficientnet", (3, 64, 64), (2, 3)),
    ("tf_efficientnet", "tf_efficientnet_b0", (3, 64, 64), (2, 3)),
    ("mobilenetv3", "mobilenetv3_small_050", (3, 64, 64), (2, 3)),
    ("regnet", "regnetx_002", (3, 64, 64), (2, 3)),
    ("densenet", "densenet121", (3, 64, 64), (2, 3)),
    ("dla", "dla46_c", (3, 64, 64), (2, 3)),
    ("dpn", "dpn48b", (3, 64, 64), (2, 3)),
    ("vgg", "vgg11", (3, 64, 64), (2, 3)),
    ("inception_v3", "inception_v3", (3, 96, 96), (2, 3)),
    ("xception", "xception41", (3, 64, 64), (2, 3)),
    ("cspnet", "cs3darknet_focus_s", (3, 64, 64), (2, 3)),
    ("ghostnet", "ghostnet_050", (3, 64, 64), (2, 3)),
    ("rexnet", "rexnet_100", (3, 64, 64), (2, 3)),
    ("repvgg", "repvgg_a0", (3, 64, 64), (2, 3)),
    ("byobnet", "test_byobnet", (3, 64, 64), (2, 3)),
    ("res2net", "res2net50_14w_8s", (3, 64, 64), (2, 3)),
    ("resnest", "resnest14d", (3, 64, 64), (2, 3)),
    ("sknet", "skresnet18", (3, 64, 64), (2, 3)),
    ("selecsls", "selecsls42", (3, 64, 64), (2, 3)),
    ("vovnet", "ese_vovnet19b_slim", (3, 64, 64), (2, 3)),
    ("mobilevit", "mobilevit_xxs", (3, 64, 64), (2, 3)),
    ("efficientformerv2", "efficientformerv2_s0", (3, 224, 224), (1, 2)),
    ("fastvit", "fastvit_t8", (3, 64, 64), (1, 2)),
    ("edgenext", "edgenext_xx_small", (3, 64, 64), (1, 2)),
    ("convmixer", "convmixer_768_32", (3, 64, 64), (0,)),
    ("nfnet", "test_nfnet", (3, 64, 64), (2, 3)),
    ("tresnet", "tresnet_m", (3, 64, 64), (2, 3)),
    ("maxvit", "test_maxvit", (3, 160, 160), (1, 2)),
    ("coatnet", "test_coatnet", (3, 160, 160), (1, 2)),
]

# Token (B, N, C) and channels-last (B, H, W, C) families: masked through the token_grid model adapter
# of plugins/ersm-token-grid (the test skips when that plugin is not installed). The 224 px ones are
# marked slow by the test.
TOKEN_COVERAGE = [
    ("vit", "test_vit", (3, 160, 160), (1, 3)),
    ("mambaout", "test_mambaout", (3, 64, 64), (1, 2)),
    ("deit", "deit_tiny_patch16_224", (3, 224, 224), (5,)),
    ("eva", "eva02_tiny_patch14_224", (3, 224, 224), (5,)),
    ("swin", "swin_tiny_patch4_window7_224", (3, 224, 224), (1, 2)),
    # class tokens that join late, a patch embedding named stem, tuple outputs (two branches), four scales
    ("cait", "cait_xxs24_224", (3, 224, 224), (21,)),
    ("mlp_mixer", "mixer_s32_224", (3, 224, 224), (5, 6)),
    ("crossvit", "crossvit_tiny_240", (3, 240, 240), (3, 4)),
    ("coat_lite", "coat_lite_tiny", (3, 224, 224), (1, 2)),
]
