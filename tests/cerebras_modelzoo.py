"""Cerebras Model Zoo params files, kept verbatim as test data: the oracle for the layout, keys
and values of the emitted params YAMLs (tests/test_cerebras.py).

Copied from github.com/Cerebras/modelzoo, folder src/cerebras/modelzoo/models/nlp/llama/configs/
(Apache License 2.0, Copyright Cerebras Systems):
- tag Release_2.3.1, params_llama_7b.yaml: LLaMA-1 7B in the legacy layout (Model Zoo <= 2.3; the
  newest LLaMA-1 7B file Cerebras shipped);
- tag Release_2.10.0, params_llama2_7b.yaml: Llama 2 7B in the trainer layout (Model Zoo 2.4+).
Trailing spaces are part of the originals.
"""

MODELZOO_2_3_1_PARAMS_LLAMA_7B = """\
# LLaMa model, 7B parameters, max_seq_length 2048
# Based on: https://arxiv.org/pdf/2302.13971v1.pdf

train_input:
    data_processor: "GptHDF5MapDataProcessor" 
    data_dir: "./shuffled/llama_data_test/val"
    shuffle: False
    shuffle_seed: 1
    batch_size: 99
    num_workers: 8
    prefetch_factor: 10
    persistent_workers: True

eval_input:
    data_processor: "GptHDF5MapDataProcessor" 
    data_dir: "./shuffled/llama_data_test/test"
    shuffle: False
    shuffle_seed: 1
    batch_size: 99
    num_workers: 8
    prefetch_factor: 10
    persistent_workers: True

model:
    # Embedding
    vocab_size: 32000
    hidden_size: 4096
    position_embedding_type: "rotary"
    rotary_dim: 128
    share_embedding_weights: False
    max_position_embeddings: 2048
    embedding_dropout_rate: 0.0

    # Decoder
    num_hidden_layers: 32
    dropout_rate: 0.0
    layer_norm_epsilon: 1.0e-6
    norm_type: "rmsnorm"

    # Decoder - Attention
    num_heads: 32
    attention_type: "scaled_dot_product"
    attention_dropout_rate: 0.0
    use_projection_bias_in_attention: False
    use_ffn_bias_in_attention: False

    # Decoder - ffn
    filter_size: 11008
    nonlinearity: "swiglu"
    use_ffn_bias: False

    # Task-specific
    use_bias_in_output: False
    loss_scaling: "num_tokens"
    loss_weight: 1.0

    # Cerebras parameters
    fp16_type: "cbfloat16"
    mixed_precision: True

optimizer:
    optimizer_type: "AdamW"
    betas: [0.9, 0.95]
    correct_bias: True
    weight_decay: 0.1
    learning_rate:
        - scheduler: "Linear"
          initial_learning_rate: 0.0
          end_learning_rate: 6.6e-05 # sqrt(batch_size / 2048) * 3.0e-4
          total_iters: 41373
        - scheduler: "CosineDecay"
          initial_learning_rate: 6.6e-05 # sqrt(batch_size / 2048) * 3.0e-4
          end_learning_rate: 6.6e-06 # sqrt(batch_size / 2048) * 3.0e-5
          total_iters: 4890748
    max_gradient_norm: 1.0
    loss_scaling_factor: "dynamic"

runconfig:
    max_steps: 4932121       # Llama 7B was trained on 1T tokens.
                            # steps = 1T / (batch_size * 2048)
    log_steps: 100
    checkpoint_steps: 10000
    save_initial_checkpoint: True
    seed: 1
    model_dir: "./model_dir"
    eval_steps: 2974 # 294569 // batch_size - 1
    eval_frequency: 10000
"""

MODELZOO_2_10_0_PARAMS_LLAMA2_7B = """\
# LLaMa v2 model, 7B parameters, max_seq_length 4096
# Based on: https://arxiv.org/pdf/2307.09288.pdf

trainer:
  init:
    backend:
      backend_type: CSX
    model_dir: ./model_dir
    seed: 1
    model:
      name: "llama"
      # Embedding
      vocab_size: 32000
      hidden_size: 4096
      position_embedding_type: rotary
      rotary_dim: 128
      share_embedding_weights: false
      max_position_embeddings: 4096
      embedding_dropout_rate: 0.0
      # Decoder
      num_hidden_layers: 32
      dropout_rate: 0.0
      layer_norm_epsilon: 1.0e-05
      norm_type: rmsnorm
      # Decoder - Attention
      num_heads: 32
      attention_type: scaled_dot_product
      attention_dropout_rate: 0.0
      use_projection_bias_in_attention: false
      use_ffn_bias_in_attention: false
      # Decoder - ffn
      filter_size: 11008
      nonlinearity: swiglu
      use_ffn_bias: false
      # Task-specific
      use_bias_in_output: false
      loss_scaling: num_tokens
      loss_weight: 1.0
    optimizer:
      AdamW:
        betas:
        - 0.9
        - 0.95
        eps: 1.0e-05
        correct_bias: true
        weight_decay: 0.1
    schedulers:
    - SequentialLR:
        schedulers:
        - LinearLR:
            initial_learning_rate: 0.0
            end_learning_rate: 0.0003
            total_iters: 2000
        - CosineDecayLR:
            initial_learning_rate: 0.0003
            end_learning_rate: 3.0e-05
            total_iters: 474837
    precision:
      # Cerebras parameters
      enabled: true
      fp16_type: cbfloat16
      loss_scaling_factor: dynamic
      max_gradient_norm: 1.0
    loop:
      max_steps: 476837 # Llama v2 7B was trained on 2T tokens. # steps = 2T / (1024 * 4096)
      eval_frequency: 10000
      eval_steps: 89
    checkpoint:
      steps: 10000
      save_initial_checkpoint: true
    logging:
      # steps = 2T / (1024 * 4096)
      log_steps: 100
  fit:
    train_dataloader:
      data_processor: GptHDF5MapDataProcessor
      data_dir: ./shuffled/llama_v2_data_test/val
      shuffle: false
      shuffle_seed: 1
      batch_size: 1024
      num_workers: 8
      prefetch_factor: 10
      persistent_workers: true
    val_dataloader: &val_dataloader
      data_processor: GptHDF5MapDataProcessor
      data_dir: ./shuffled/llama_v2_data_test/test
      shuffle: false
      shuffle_seed: 1
      batch_size: 1024
      num_workers: 8
      prefetch_factor: 10
      persistent_workers: true
  validate:
    val_dataloader: *val_dataloader
  validate_all:
    val_dataloaders: *val_dataloader
"""

# release folder / file name -> text
MODELZOO_FILES = {
    "modelzoo-2.3.1/params_llama_7b.yaml": MODELZOO_2_3_1_PARAMS_LLAMA_7B,
    "modelzoo-2.10.0/params_llama2_7b.yaml": MODELZOO_2_10_0_PARAMS_LLAMA2_7B,
}
