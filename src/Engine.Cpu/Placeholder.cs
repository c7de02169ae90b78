namespace Engine.Cpu;
