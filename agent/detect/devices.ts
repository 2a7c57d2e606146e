// Decides which slots an agent offers: its GPUs, or a configured number of CPU slots.
import { DetError } from '../../common/errors';
import type { Device } from '../../common/types';
import { detectGpus, type DetectGpusOptions, type ExecPort, execFilePort } from './nvidia-smi';

/** How the agent picks its slot type: GPUs when present (auto), GPUs only, or CPU slots only. */
export type SlotType = 'auto' | 'gpu' | 'cpu';

/** Inputs of detectDevices (from the agent config). */
export interface DetectDevicesOptions {
  slotType: SlotType;
  /** Number of CPU slots offered when the agent uses CPU slots. */
  cpuSlots: number;
  /** Passed to nvidia-smi detection. */
  nvidiaSmi?: DetectGpusOptions;
}

/** The agent's slots, plus a warning to log when GPU detection misbehaved. */
export interface DeviceDetection {
  devices: Device[];
  warning?: string;
}

/** `n` CPU slots with ids 0..n-1. */
export function cpuDevices(n: number): Device[] {
  return Array.from({ length: n }, (_, id) => ({ id, brand: 'cpu', uuid: `cpu-${id}`, type: 'cpu' as const, memoryMib: 0 }));
}

/**
 * Detects the agent's slots. `gpu` without GPUs is a config error (DET_ERR_CONFIG_INVALID);
 * `cpu` never runs nvidia-smi.
 */
export async function detectDevices(opts: DetectDevicesOptions, exec: ExecPort = execFilePort): Promise<DeviceDetection> {
  if (!Number.isInteger(opts.cpuSlots) || opts.cpuSlots < 0) {
    throw new DetError('DET_ERR_CONFIG_INVALID', `cpu_slots must be a non-negative integer, got ${String(opts.cpuSlots)}`);
  }
  switch (opts.slotType) {
    case 'cpu':
      return { devices: cpuDevices(opts.cpuSlots) };
    case 'gpu': {
      const gpus = await detectGpus(exec, opts.nvidiaSmi);
      if (gpus.devices.length === 0) {
        throw new DetError(
          'DET_ERR_CONFIG_INVALID',
          `slot_type is gpu but nvidia-smi found no GPUs: ${gpus.absentReason ?? 'no devices listed'}. ` +
            'Install the NVIDIA driver, or set slot_type to auto or cpu.',
        );
      }
      return withWarning({ devices: gpus.devices }, gpus.warning);
    }
    case 'auto': {
      const gpus = await detectGpus(exec, opts.nvidiaSmi);
      const devices = gpus.devices.length > 0 ? gpus.devices : cpuDevices(opts.cpuSlots);
      return withWarning({ devices }, gpus.warning);
    }
    default: {
      const bad: never = opts.slotType;
      throw new DetError('DET_ERR_CONFIG_INVALID', `slot_type must be auto, gpu or cpu, got ${JSON.stringify(bad)}`);
    }
  }
}

function withWarning(d: DeviceDetection, warning: string | undefined): DeviceDetection {
  return warning ? { ...d, warning } : d;
}
